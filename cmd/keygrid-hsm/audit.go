package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/keygrid/keygrid-hsm/internal/audit"
)

// cmdAudit runs "audit verify [--anchor HASH] FILE…": it checks the hash
// chain of audit log files given in rotation order (oldest first, the live
// file last) and reports the first line that was changed, removed, inserted
// or reordered, exiting 1. With one file that continues a rotated one, the
// check starts at its rotation record (or at --anchor, the last hash of the
// file before it).
func cmdAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return errors.New("audit: give a subcommand: verify FILE…")
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	anchor := fs.String("anchor", "", "prev_hash the first line must carry (the last hash of the file before it; default: the file must begin a chain or a rotation)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: keygrid-hsm audit verify [--anchor HASH] FILE… (rotated files oldest first, the live file last)")
		fs.PrintDefaults()
	}
	var files []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files, rest = append(files, fs.Arg(0)), fs.Args()[1:]
	}
	if len(files) == 0 {
		fs.Usage()
		return &exitError{2, errors.New("audit verify: name at least one file")}
	}
	s, err := audit.VerifyFiles(files, *anchor)
	if err != nil {
		var p *audit.Problem
		if errors.As(err, &p) {
			return &exitError{1, fmt.Errorf("audit chain broken: %s: line %d: %s", p.File, p.Line, p.Reason)}
		}
		return err
	}
	fmt.Fprintf(stdout, "audit chain OK: %d lines in %d files; last hash %s\n", s.Lines, s.Files, s.LastHash)
	return nil
}
