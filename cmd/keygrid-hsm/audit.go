package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// auditVerifyOptions are the parsed options of "audit verify".
type auditVerifyOptions struct {
	// Files are the log files in rotation order (oldest first, the live
	// file last). With Config and none given: the configured log and its
	// rotated files.
	Files  []string
	Anchor string // chain only: the prev_hash the first line must carry
	// Config: check the checkpoints and audit keys of this configuration's
	// metadata store and provider.
	Config string
	// Client, when set (--server), fetches the checkpoints and audit keys
	// from a running server.
	Client func() (*client.Client, error)
	// Replica is the replica the log is claimed to be of (default: the
	// configured one with Config, the one the log's checkpoint lines name
	// with a server).
	Replica string
	// JSON: print the result as JSON (-o json).
	JSON bool
}

// auditResult is audit verify's answer with -o json.
type auditResult struct {
	OK          bool   `json:"ok"`
	Files       int    `json:"files"`
	Lines       int    `json:"lines"`
	LastHash    string `json:"last_hash"`
	Replica     string `json:"replica,omitempty"`
	Checkpoints *int   `json:"checkpoints,omitempty"`
	NewestSeq   uint64 `json:"newest_checkpoint_seq,omitempty"`
	NewestTime  string `json:"newest_checkpoint_time,omitempty"`
	Unvouched   uint64 `json:"records_after_newest_checkpoint,omitempty"`
}

func auditCmd(s *streams) *cobra.Command {
	var o auditVerifyOptions
	verify := &cobra.Command{
		Use:   "verify [FILE...]",
		Short: "check the audit log's hash chain, and with --config or --server its signed checkpoints",
		Long: `Check the hash chain of audit log files given in rotation order (oldest first, the live file last)
and report the first line that was changed, removed, inserted or reordered (exit 1). With one file
that continues a rotated one, the check starts at its rotation record (or at --anchor, the last hash
of the file before it).

With --config (the gateway's configuration: its metadata store and audit key) or --server (a running
gateway's /api/v1/audit/checkpoints) the signed checkpoints are checked too: a log cut after a
checkpoint, re-hashed from an edit onward, a missing or emptied file, or another replica's log is
reported (exit 1). With --config and no FILE, the configured log and its rotated files are checked.`,
		Example: `  keygrid-hsm audit verify data/audit.log.2026-01-01T00-00-00Z data/audit.log
  keygrid-hsm audit verify --config keygrid.yaml
  keygrid-hsm audit verify --server https://kg.example:8443 --token-file auditor.token audit.log`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && !cmd.Flags().Changed("config") {
				return usageErr(cmd, "audit verify needs at least one FILE (or --config)")
			}
			return nil
		},
	}
	verify = clientCmd(s, verify, nil, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.StringVar(&o.Anchor, "anchor", "", "prev_hash the first line must carry (chain only; default: the file must begin a chain or a rotation)")
		f.StringVar(&o.Config, "config", "", "the gateway's configuration: check signed checkpoints from its metadata store and provider")
		f.StringVar(&o.Replica, "replica", "", "the replica the log is of (default: the configured one, or the one the log names)")
		return func(ctx context.Context) error {
			o.Files, o.JSON = c.posArgs, c.output == "json"
			if c.changed("server") {
				o.Client = c.client
			}
			if o.Anchor != "" && (o.Config != "" || o.Client != nil) {
				return usageErr(c.cmd, "audit verify: --anchor checks a chain alone; checkpoints need the whole log")
			}
			return auditVerify(ctx, o, c.stdout)
		}
	})
	return parent("audit", "the audit log: verify its hash chain and signed checkpoints", verify)
}

// auditVerify verifies a log: its chain, and with a configuration or a
// server its signed checkpoints. A broken chain or a problem a checkpoint
// shows is an error naming it (wrapping an *audit.Problem, or one of the
// audit.Err* kinds): exit 1.
func auditVerify(ctx context.Context, o auditVerifyOptions, stdout io.Writer) error {
	if o.Config == "" && o.Client == nil {
		s, err := audit.VerifyFiles(o.Files, o.Anchor)
		if err != nil {
			return verifyFailed(err)
		}
		if o.JSON {
			return writeJSON(stdout, auditResult{OK: true, Files: s.Files, Lines: s.Lines, LastHash: s.LastHash})
		}
		fmt.Fprintf(stdout, "audit chain OK: %d lines in %d files; last hash %s\n", s.Lines, s.Files, s.LastHash)
		return nil
	}
	vo := audit.VerifyOptions{Paths: o.Files, Replica: o.Replica}
	var err error
	if o.Config != "" {
		err = evidenceFromConfig(ctx, o, &vo)
	} else {
		err = evidenceFromServer(ctx, o, &vo)
	}
	if err != nil {
		return verifyFailed(err)
	}
	rep, err := audit.VerifyLog(vo)
	if err != nil {
		return verifyFailed(err)
	}
	if o.JSON {
		r := auditResult{OK: true, Files: rep.Files, Lines: rep.Lines, LastHash: rep.LastHash, Replica: vo.Replica, Checkpoints: &rep.Checkpoints}
		if rep.Checkpoints > 0 {
			r.NewestSeq, r.NewestTime, r.Unvouched = rep.Newest.Seq, rep.Newest.Time.UTC().Format("2006-01-02T15:04:05Z"), rep.Unvouched
		}
		return writeJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "audit log OK: %d lines in %d files of replica %s; %d signed checkpoints match", rep.Lines, rep.Files, vo.Replica, rep.Checkpoints)
	if rep.Checkpoints > 0 {
		fmt.Fprintf(stdout, ", the newest at seq %d (%s); %d records after it", rep.Newest.Seq, rep.Newest.Time.UTC().Format("2006-01-02T15:04:05Z"), rep.Unvouched)
	}
	fmt.Fprintln(stdout)
	return nil
}

func verifyFailed(err error) error {
	var p *audit.Problem
	if errors.As(err, &p) {
		return fmt.Errorf("audit chain broken: %w", err)
	}
	return fmt.Errorf("audit log not verified: %w", err)
}

func evidenceFromConfig(ctx context.Context, o auditVerifyOptions, vo *audit.VerifyOptions) error {
	cfg, err := config.Load(o.Config, config.Flags{})
	if err != nil {
		return err
	}
	reg := registry.All()
	if err := cfg.Validate(reg.Types()); err != nil {
		return err
	}
	ev, err := server.LoadAuditEvidence(ctx, cfg, reg, o.Replica)
	if err != nil {
		return err
	}
	if ev.Replica == "" {
		return errors.New("no replica id is configured or kept beside the log (" + audit.ReplicaFile(cfg.Audit.Path) + "): name it with --replica")
	}
	if len(vo.Paths) == 0 {
		if vo.Paths, err = audit.LogFiles(cfg.Audit.Path); err != nil {
			return err
		}
	}
	vo.Replica, vo.Checkpoints, vo.Keys = ev.Replica, ev.Checkpoints, ev.Keys
	return nil
}

func evidenceFromServer(ctx context.Context, o auditVerifyOptions, vo *audit.VerifyOptions) error {
	if vo.Replica == "" {
		r, err := audit.LogReplica(vo.Paths)
		if err != nil {
			return err
		}
		if r == "" {
			return errors.New("the log names no replica (it has no checkpoint line): name it with --replica")
		}
		vo.Replica = r
	}
	cl, err := o.Client()
	if err != nil {
		return err
	}
	list, err := cl.AllAuditCheckpoints(ctx, vo.Replica)
	if err != nil {
		return err
	}
	vo.Keys = audit.KeySet{}
	for _, k := range list.SigningKeys {
		b, _ := pem.Decode([]byte(k.PublicKey))
		if b == nil {
			return fmt.Errorf("the server's audit key %s is not PEM", k.Key)
		}
		pub, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return fmt.Errorf("the server's audit key %s: %w", k.Key, err)
		}
		vo.Keys[k.Key] = pub
	}
	for _, c := range list.Checkpoints {
		vo.Checkpoints = append(vo.Checkpoints, audit.Checkpoint{Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head, Time: c.Time,
			KeyRef: c.Key, Signature: c.Signature})
	}
	return nil
}
