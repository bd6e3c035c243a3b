package kgerr

import (
	"strconv"
	"unicode/utf8"
)

// MaxEcho is the most bytes of a request's text a message repeats: enough
// for any valid name (128) or key id, far less than a body can carry.
const MaxEcho = 128

// Clip shortens s, a piece of a request (a field name, a key reference, a
// provider name, a path, a value), to at most MaxEcho bytes of whole UTF-8
// characters, marking a cut with "…". Every message that echoes a
// request's text echoes it through Clip (or Quote), whichever front end or
// layer builds it, so that no request is answered with a copy of itself.
func Clip(s string) string {
	if len(s) <= MaxEcho {
		return s
	}
	n := MaxEcho
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// Quote is strconv.Quote of Clip(s): the form of a request's text in a
// message ("key \"x\" not found").
func Quote(s string) string { return strconv.Quote(Clip(s)) }
