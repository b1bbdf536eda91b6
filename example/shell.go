package main

import "strings"

// shellQuote quotes s as one word for a POSIX shell: in single quotes,
// inside which nothing is special. A single quote in s closes the
// quoting, follows escaped with a backslash, and opens the quoting again.
// The commands the example prints for pasting quote with it every value
// they did not write themselves.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
