package audit

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzVerify feeds the verifier arbitrary files: it never panics, and a
// problem names a line that exists (or the one just past a too-long line).
func FuzzVerify(f *testing.F) {
	_, good := writeLog(f, 3)
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("\n\n"))
	f.Add([]byte(`{"seq":1,"prev_hash":"x","hash":"y"}`))
	f.Add(append(bytes.Clone(good), good...))
	f.Add(bytes.ReplaceAll(good, []byte(`"seq":2`), []byte(`"seq":9`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, last, err := Verify(bytes.NewReader(data), "")
		if err == nil {
			if n > 0 && len(last) != 64 {
				t.Fatalf("verified %d lines with last hash %q", n, last)
			}
			return
		}
		var p *Problem
		if !errors.As(err, &p) {
			t.Fatalf("Verify error %v is not a *Problem", err)
		}
		if p.Line < 1 || p.Line > bytes.Count(data, []byte("\n"))+1 {
			t.Fatalf("problem at line %d of a %d-byte input", p.Line, len(data))
		}
	})
}

// FuzzVerifyTamper changes one byte of a valid log, or removes or swaps
// lines: unless the result is the original log, the verifier reports the
// first line that differs.
func FuzzVerifyTamper(f *testing.F) {
	_, good := writeLog(f, 4)
	ls := lines(good)
	f.Add(uint16(0), byte('x'), uint8(0))
	f.Add(uint16(300), byte('\n'), uint8(0))
	f.Add(uint16(0), byte(0), uint8(1))
	f.Add(uint16(2), byte(0), uint8(2))
	f.Fuzz(func(t *testing.T, pos uint16, b byte, mode uint8) {
		var m []byte
		firstDiff := 0 // 0-based line index of the first change
		switch mode % 3 {
		case 0: // edit a byte
			i := int(pos) % len(good)
			if good[i] == b {
				return
			}
			m = bytes.Clone(good)
			m[i] = b
			firstDiff = bytes.Count(good[:i], []byte("\n"))
			if i == len(good)-1 {
				// The final newline changed: the last line runs on.
				firstDiff = len(ls) - 1
			}
		case 1: // remove a line
			i := int(pos) % len(ls)
			m = bytes.Join(append(append([][]byte{}, ls[:i]...), ls[i+1:]...), nil)
			if i == len(ls)-1 {
				return // a removed last line is not visible in the file alone
			}
			firstDiff = i
		case 2: // swap a line with the next
			i := int(pos) % (len(ls) - 1)
			xs := append([][]byte{}, ls...)
			xs[i], xs[i+1] = xs[i+1], xs[i]
			m = bytes.Join(xs, nil)
			firstDiff = i
		}
		_, _, err := Verify(bytes.NewReader(m), "")
		var p *Problem
		if !errors.As(err, &p) {
			if mode%3 == 0 && int(pos)%len(good) == len(good)-1 && (b == '\r') {
				return // "}\r" + EOF: a CR before the end is read as a line ending
			}
			t.Fatalf("tampered log verifies (mode %d pos %d byte %q): %v", mode%3, pos, b, err)
		}
		if p.Line != firstDiff+1 {
			t.Fatalf("mode %d pos %d byte %q: problem at line %d, want %d (%s)", mode%3, pos, b, p.Line, firstDiff+1, p.Reason)
		}
	})
}
