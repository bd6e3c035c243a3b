package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/keygrid/keygrid-hsm/internal/audit"
)

// auditVerifyOptions are the flags and files of audit verify.
type auditVerifyOptions struct {
	anchor string
	files  []string
}

func auditCmd(s *streams) *cobra.Command {
	var o auditVerifyOptions
	verify := &cobra.Command{
		Use:   "verify FILE...",
		Short: "check the audit log's hash chain (rotated files oldest first, the live file last)",
		Long: `Check the hash chain of audit log files given in rotation order (oldest first, the live file last)
and report the first line that was changed, removed, inserted or reordered (exit 1). With one file
that continues a rotated one, the check starts at its rotation record (or at --anchor, the last hash
of the file before it).`,
		Example: "  keygrid-hsm audit verify data/audit.log.2026-01-01T00-00-00Z data/audit.log",
		Args:    minArgs(1, "at least one FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.files = args
			return runAuditVerify(o, s.stdout)
		},
	}
	verify.Flags().StringVar(&o.anchor, "anchor", "", "prev_hash the first line must carry (the last hash of the file before it; default: the file must begin a chain or a rotation)")
	return parent("audit", "the audit log: verify its hash chain", verify)
}

// runAuditVerify checks the chain of o.files.
func runAuditVerify(o auditVerifyOptions, stdout io.Writer) error {
	s, err := audit.VerifyFiles(o.files, o.anchor)
	if err != nil {
		var p *audit.Problem
		if errors.As(err, &p) {
			return fmt.Errorf("audit chain broken: %s: line %d: %s", p.File, p.Line, p.Reason)
		}
		return err
	}
	fmt.Fprintf(stdout, "audit chain OK: %d lines in %d files; last hash %s\n", s.Lines, s.Files, s.LastHash)
	return nil
}
