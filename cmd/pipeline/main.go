// Command pipeline is the project's one binary: it trains (`run`), calibrates, evaluates,
// samples, pretrains, inspects ONNX models and scores rewards. Each subcommand lives in its
// own file and registers itself in the table below; main only parses the command line,
// installs signal handling and maps errors to exit codes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand. name may be two words ("models inspect").
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

// commands is filled by the init functions of this package's files.
var commands = map[string]command{}

func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("pipeline: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

// errUsage marks errors in how the command was called (exit code 2).
var errUsage = errors.New("usage")

func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// main only exits: os.Exit skips deferred calls, so everything that defers runs in run.
func main() { os.Exit(run()) }

// run installs the signal handling, runs the command line and returns the exit code.
func run() int {
	// GoMLX would otherwise try to download an XLA plugin when none is installed; this
	// project selects backends explicitly and never downloads at run time.
	if os.Getenv("GOMLX_NO_AUTO_INSTALL") == "" {
		os.Setenv("GOMLX_NO_AUTO_INSTALL", "1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd, rest, ok := lookup(args)
	if !ok {
		// Asked-for help is output (stdout, exit 0), as every subcommand's -h; a wrong command
		// is an error (stderr, exit 2).
		if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			printUsage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "pipeline: unknown command %q\n\n", strings.Join(args, " "))
		printUsage(stderr)
		return 2
	}
	err := cmd.run(ctx, rest, stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "pipeline %s: %v (pipeline %s -h lists the flags)\n", cmd.name, err, cmd.name)
		return 2
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(stderr, "pipeline %s: interrupted: %v\n", cmd.name, err)
		return 130
	default:
		fmt.Fprintf(stderr, "pipeline %s: %v\n", cmd.name, err)
		return 1
	}
}

func lookup(args []string) (command, []string, bool) {
	if len(args) >= 2 {
		if c, ok := commands[args[0]+" "+args[1]]; ok {
			return c, args[2:], true
		}
	}
	if len(args) >= 1 {
		if c, ok := commands[args[0]]; ok {
			return c, args[1:], true
		}
	}
	return command{}, nil, false
}

func printUsage(w io.Writer) {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: pipeline COMMAND [flags]\n\ncommands:")
	for _, n := range names {
		fmt.Fprintf(w, "  %-16s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun `pipeline COMMAND -h` for a command's flags.")
}

// newFlags returns a flag set that reports errors instead of exiting, with usage text that
// names the command. The usage goes to out (stdout) when -h asks for it; parseFlags keeps the
// flag package from printing anything on a bad flag, which becomes one error line on stderr.
func newFlags(name, argsUsage string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: pipeline %s [flags] %s\n", name, argsUsage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, allowing flags after positional arguments, and maps flag errors to
// usage errors. The usage text is printed only for -h (flag.ErrHelp).
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	defer func() { fs.Usage = usage; fs.SetOutput(out) }()
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(out)
				usage()
				return nil, err
			}
			return nil, usageError("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}
