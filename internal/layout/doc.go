// Package layout has no code: its test checks the project's dependency rules (DESIGN §2,
// README "Layout") on the whole module, so a change that breaks one fails the suite.
package layout
