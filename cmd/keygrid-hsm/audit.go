package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"

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
}

// cmdAudit parses "audit verify" and runs auditVerify:
//
//	audit verify [--anchor HASH] FILE…              the hash chain only
//	audit verify --config FILE [--replica ID] [FILE…]  chain and checkpoints from the store
//	audit verify --server URL [credentials] FILE…   chain and checkpoints from a server
func cmdAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return errors.New("audit: give a subcommand: verify FILE…")
	}
	c := newCLI("audit verify", nil, stdout, stderr)
	var o auditVerifyOptions
	c.fs.StringVar(&o.Anchor, "anchor", "", "prev_hash the first line must carry (chain only; default: the file must begin a chain or a rotation)")
	c.fs.StringVar(&o.Config, "config", "", "the gateway's configuration: check signed checkpoints from its metadata store and provider")
	c.fs.StringVar(&o.Replica, "replica", "", "the replica the log is of (default: the configured one, or the one the log names)")
	c.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: keygrid-hsm audit verify [--anchor HASH] FILE…\n"+
			"       keygrid-hsm audit verify --config FILE [--replica ID] [FILE…]\n"+
			"       keygrid-hsm audit verify --server URL [--token …] [--replica ID] FILE…\n"+
			"(rotated files oldest first, the live file last)")
		c.fs.PrintDefaults()
	}
	if err := c.parse(args[1:]); err != nil {
		return err
	}
	o.Files = c.posArgs
	c.fs.Visit(func(f *flag.Flag) {
		if f.Name == "server" {
			o.Client = c.client
		}
	})
	if len(o.Files) == 0 && o.Config == "" {
		c.fs.Usage()
		return &exitError{2, errors.New("audit verify: name at least one file (or --config)")}
	}
	err := auditVerify(ctx, o, stdout)
	var ee *exitError
	if err != nil && !errors.As(err, &ee) {
		return &exitError{1, err}
	}
	return err
}

// auditVerify verifies a log: its chain, and with a configuration or a
// server its signed checkpoints. A broken chain or a problem a checkpoint
// shows is an error naming it (wrapping an *audit.Problem, or one of the
// audit.Err* kinds); cmdAudit exits 1 on any error.
func auditVerify(ctx context.Context, o auditVerifyOptions, stdout io.Writer) error {
	if o.Config == "" && o.Client == nil {
		s, err := audit.VerifyFiles(o.Files, o.Anchor)
		if err != nil {
			return verifyFailed(err)
		}
		fmt.Fprintf(stdout, "audit chain OK: %d lines in %d files; last hash %s\n", s.Lines, s.Files, s.LastHash)
		return nil
	}
	if o.Anchor != "" {
		return &exitError{2, errors.New("audit verify: --anchor checks a chain alone; checkpoints need the whole log")}
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
