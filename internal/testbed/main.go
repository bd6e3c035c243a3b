package testbed

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// A Part is something a test binary sets up once, in TestMain, for all its
// tests: a SoftHSM2 token (WithSoftHSM) or a PostgreSQL cluster
// (WithPostgres). It returns how to tear it down.
type Part func() (teardown func(), err error)

// process holds the parts Main set up for this test binary.
var process struct {
	softSet     bool
	soft        *SoftHSM
	softMissing string

	pgSet     bool
	pg        *Postgres
	pgMissing string
}

// Main is the body of a TestMain: it sets up parts, runs the tests, tears
// the parts down (in reverse order) and exits with the tests' code. A part
// that is missing from the machine is not an error here: the tests that use
// it skip, or fail when KEYGRID_REQUIRE_SOFTHSM=1. A part that is present
// and fails to start stops the binary.
//
// No test talks to AWS: an aws-cloudhsm provider that watches its cluster
// with no endpoint of its own would call the regional management endpoint,
// so Main points the SDK's CloudHSM endpoint at a closed loopback port and
// turns the instance metadata service off (tests that use the fake
// management API set their own endpoint).
func Main(m *testing.M, parts ...Part) {
	os.Setenv("AWS_ENDPOINT_URL_CLOUDHSM_V2", "http://127.0.0.1:9")
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	var teardowns []func()
	down := func() {
		for i := len(teardowns) - 1; i >= 0; i-- {
			teardowns[i]()
		}
	}
	for _, p := range parts {
		td, err := p()
		if err != nil {
			down()
			fmt.Fprintln(os.Stderr, "testbed:", err)
			os.Exit(1)
		}
		teardowns = append(teardowns, td)
	}
	code := m.Run()
	down()
	os.Exit(code)
}

// WithSoftHSM makes one SoftHSM2 token (label, user PIN pin) for the whole
// test binary and points SOFTHSM2_CONF at it: a module reads that variable
// once, at C_Initialize, so every test of a process shares one
// configuration. Tests get the token from ProcessSoftHSM.
func WithSoftHSM(label, pin string) Part {
	return func() (func(), error) {
		process.softSet = true
		if m := Missing("softhsm2-util", SoftHSMModule); m != "" {
			process.softMissing = m + " is missing (run scripts/test-deps.sh)"
			return func() {}, nil
		}
		dir, err := os.MkdirTemp("", "keygrid-softhsm-")
		if err != nil {
			return nil, err
		}
		s, err := NewSoftHSM(dir, label, pin)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("softhsm setup: %w", err)
		}
		os.Setenv("SOFTHSM2_CONF", s.Conf)
		process.soft = s
		return func() { os.RemoveAll(dir) }, nil
	}
}

// ProcessSoftHSM returns the token WithSoftHSM made for this test binary.
// When SoftHSM2 is missing it skips the test, or fails it when
// KEYGRID_REQUIRE_SOFTHSM=1.
func ProcessSoftHSM(tb testing.TB) *SoftHSM {
	tb.Helper()
	if !process.softSet {
		tb.Fatal("testbed.ProcessSoftHSM: TestMain does not call testbed.Main with testbed.WithSoftHSM")
	}
	if process.soft == nil {
		if Required() {
			tb.Fatalf("SoftHSM2 is required (KEYGRID_REQUIRE_SOFTHSM=1): %s", process.softMissing)
		}
		tb.Skip(process.softMissing)
	}
	return process.soft
}

// WithPostgres starts one PostgreSQL cluster for the whole test binary;
// tests get it from ProcessPostgres (and a database of their own from its
// NewDatabase).
func WithPostgres() Part {
	return func() (func(), error) {
		process.pgSet = true
		if _, m := PostgresBin(); m != "" {
			process.pgMissing = m + " is missing (run scripts/test-deps.sh)"
			return func() {}, nil
		}
		p, err := StartPostgres()
		if err != nil {
			return nil, fmt.Errorf("postgres setup: %w", err)
		}
		process.pg = p
		return func() {
			if err := p.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "testbed:", err)
			}
		}, nil
	}
}

// ProcessPostgres returns the cluster WithPostgres started for this test
// binary. When PostgreSQL is missing it skips the test, or fails it when
// KEYGRID_REQUIRE_SOFTHSM=1.
func ProcessPostgres(tb testing.TB) *Postgres {
	tb.Helper()
	if !process.pgSet {
		tb.Fatal("testbed.ProcessPostgres: TestMain does not call testbed.Main with testbed.WithPostgres")
	}
	if process.pg == nil {
		if Required() {
			tb.Fatalf("PostgreSQL is required (KEYGRID_REQUIRE_SOFTHSM=1): %s", process.pgMissing)
		}
		tb.Skip(process.pgMissing)
	}
	return process.pg
}

// tpm2Process is the tpm2-pkcs11 bed WithTPM2 declared: started by the
// first test that asks for it (it takes a second and a half), shared by
// the others, stopped by Main.
var tpm2Process struct {
	set        bool
	label, pin string
	once       sync.Once
	bed        *TPM2
	stop       func()
	missing    string
	err        error
}

// WithTPM2 declares one tpm2-pkcs11 bed (token label, user PIN pin) for
// the whole test binary; ProcessTPM2 starts it on first use.
func WithTPM2(label, pin string) Part {
	return func() (func(), error) {
		tpm2Process.set, tpm2Process.label, tpm2Process.pin = true, label, pin
		return func() {
			if tpm2Process.stop != nil {
				tpm2Process.stop()
			}
		}, nil
	}
}

// ProcessTPM2 returns the bed WithTPM2 declared, starting it on first
// use. When a part of it is missing it skips the test, or fails it when
// KEYGRID_REQUIRE_SOFTHSM=1.
func ProcessTPM2(tb testing.TB) *TPM2 {
	tb.Helper()
	p := &tpm2Process
	if !p.set {
		tb.Fatal("testbed.ProcessTPM2: TestMain does not call testbed.Main with testbed.WithTPM2")
	}
	p.once.Do(func() { p.bed, p.stop, p.missing, p.err = SetupTPM2Process(p.label, p.pin) })
	switch {
	case p.err != nil:
		tb.Fatalf("tpm2-pkcs11 bed: %v", p.err)
	case p.bed == nil && Required():
		tb.Fatalf("tpm2-pkcs11 is required (KEYGRID_REQUIRE_SOFTHSM=1): %s", p.missing)
	case p.bed == nil:
		tb.Skip(p.missing)
	}
	return p.bed
}
