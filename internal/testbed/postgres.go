package testbed

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// PostgresOSUser runs the throwaway clusters when the tests run as root
// (initdb and postgres refuse root). It is created if missing.
const PostgresOSUser = "keygrid-pg"

// PostgresBin returns the newest Debian PostgreSQL bin directory holding
// initdb and pg_ctl, or "" with what is missing.
func PostgresBin() (dir, missing string) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) < pgMajor(dirs[j]) })
	for i := len(dirs) - 1; i >= 0; i-- {
		if Missing(filepath.Join(dirs[i], "initdb"), filepath.Join(dirs[i], "pg_ctl")) == "" {
			return dirs[i], ""
		}
	}
	return "", "PostgreSQL (/usr/lib/postgresql/*/bin/initdb, Debian package postgresql)"
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Postgres is a throwaway PostgreSQL cluster: its data directory, unix
// socket and log in one temporary directory, listening on 127.0.0.1 on a
// free port, with one superuser that logs in with a password over TCP.
type Postgres struct {
	Dir      string
	Port     int
	User     string
	Password string

	bin    string
	osUser string // "" = the current user
	admin  *sql.DB
	// version is the server_version_num (150004 for 15.4).
	version int
	dbs     atomic.Int64

	stopOnce sync.Once
	stopped  atomic.Bool
	stopErr  error
}

// StartPostgres initializes and starts a cluster. As root it runs the
// server as PostgresOSUser (creating that user with useradd if needed).
// Stop it with Stop.
func StartPostgres() (_ *Postgres, err error) {
	bin, missing := PostgresBin()
	if missing != "" {
		return nil, errors.New(missing + " is missing")
	}
	p := &Postgres{bin: bin, User: "keygrid", Password: randomHex(12)}
	if os.Geteuid() == 0 {
		p.osUser = PostgresOSUser
		if err := ensureOSUser(p.osUser); err != nil {
			return nil, err
		}
	}
	if p.Dir, err = os.MkdirTemp("", "keygrid-pg-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.Stop()
		}
	}()
	pwfile := filepath.Join(p.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if p.osUser != "" {
		if err := chownTree(p.Dir, p.osUser); err != nil {
			return nil, err
		}
	}
	// Local (socket) connections are trusted, only for the helper's own
	// administration; TCP connections need the password, as in production.
	if out, err := p.command("initdb", "-D", p.dataDir(), "-U", p.User, "--pwfile", pwfile, "--auth-local=trust",
		"--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	os.Remove(pwfile)
	for attempt := 0; ; attempt++ {
		if p.Port, err = freePort(); err != nil {
			return nil, err
		}
		// Durability settings off: the tests kill gateways, never the
		// database's machine.
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off "+
			"-c synchronous_commit=off -c full_page_writes=off", p.Port, p.Dir)
		out, err := p.command("pg_ctl", "-D", p.dataDir(), "-l", filepath.Join(p.Dir, "postgres.log"), "-o", opts, "-w", "-t", "60", "start").CombinedOutput()
		if err == nil {
			break
		}
		logTail, _ := os.ReadFile(filepath.Join(p.Dir, "postgres.log"))
		if attempt == 2 || !strings.Contains(string(logTail), "could not bind") {
			return nil, fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, logTail)
		}
	}
	p.watchdog()
	p.admin, err = sql.Open("pgx", p.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.admin.QueryRowContext(ctx, "SHOW server_version_num").Scan(&p.version); err != nil {
		return nil, fmt.Errorf("connect to the new cluster: %w", err)
	}
	return p, nil
}

// NewPostgres starts a cluster for one test, stopped when it ends. It skips
// the test when PostgreSQL is missing, or fails it when KEYGRID_REQUIRE_SOFTHSM=1.
func NewPostgres(tb testing.TB) *Postgres {
	tb.Helper()
	RequirePostgres(tb)
	p, err := StartPostgres()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return p
}

// RequirePostgres skips (or, when parts are required, fails) a test on a
// machine without PostgreSQL.
func RequirePostgres(tb testing.TB) {
	tb.Helper()
	if _, missing := PostgresBin(); missing != "" {
		if Required() {
			tb.Fatalf("%s is missing and KEYGRID_REQUIRE_SOFTHSM=1 (run scripts/test-deps.sh)", missing)
		}
		tb.Skipf("%s is missing (run scripts/test-deps.sh)", missing)
	}
}

func (p *Postgres) dataDir() string { return filepath.Join(p.Dir, "data") }

// command runs a PostgreSQL program as the cluster's OS user.
func (p *Postgres) command(prog string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, prog)
	var cmd *exec.Cmd
	if p.osUser == "" {
		cmd = exec.Command(path, args...)
	} else {
		cmd = exec.Command("runuser", append([]string{"-u", p.osUser, "--", path}, args...)...)
	}
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// DSN is the URL of database db over TCP, with the password.
func (p *Postgres) DSN(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(p.User, p.Password), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)),
		Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// CreateDatabase creates an empty database and returns its DSN.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	q := "CREATE DATABASE " + quoteIdent(name)
	if p.version >= 150000 {
		// Copying the template's files is much faster than WAL-logging
		// them (15's default) for a small, throwaway database.
		q += " STRATEGY = FILE_COPY"
	}
	if _, err := p.admin.ExecContext(ctx, q); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return p.DSN(name), nil
}

// DropDatabase drops a database, closing its connections.
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	_, err := p.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(name)+" WITH (FORCE)")
	return err
}

// NewDatabase creates a database of its own for one test, dropped when the
// test ends, and returns its DSN.
func (p *Postgres) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("kg_%d_%d", os.Getpid(), p.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := p.CreateDatabase(ctx, name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if p.stopped.Load() {
			return // the cluster is gone, and its databases with it
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.DropDatabase(ctx, name); err != nil {
			tb.Errorf("drop database %s: %v", name, err)
		}
	})
	return dsn
}

// Stop stops the server at once and removes the cluster's directory.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() {
		p.stopped.Store(true)
		if p.admin != nil {
			p.admin.Close()
		}
		var errs []error
		if _, err := os.Stat(filepath.Join(p.dataDir(), "postmaster.pid")); err == nil {
			if out, err := p.command("pg_ctl", "-D", p.dataDir(), "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("pg_ctl stop: %v\n%s", err, out))
			}
		}
		if p.Dir != "" {
			errs = append(errs, os.RemoveAll(p.Dir))
		}
		p.stopErr = errors.Join(errs...)
	})
	return p.stopErr
}

// watchdog starts a process that stops the cluster and removes its
// directory when this test process is gone without calling Stop (a panic,
// a test timeout, a kill): the server is a daemon and would outlive it.
func (p *Postgres) watchdog() {
	stop := p.command("pg_ctl", "-D", p.dataDir(), "-m", "immediate", "-w", "stop")
	script := `while kill -0 "$0" 2>/dev/null && [ -d "$1" ]; do sleep 1; done
[ -d "$1" ] || exit 0
dir=$1; shift; "$@" >/dev/null 2>&1; rm -rf "$dir"`
	args := append([]string{"-c", script, strconv.Itoa(os.Getpid()), p.Dir}, stop.Args...)
	cmd := exec.Command("sh", args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not in the test's process group
	if cmd.Start() == nil {
		go cmd.Wait()
	}
}

// ensureOSUser creates a system user without a home or a login shell.
func ensureOSUser(name string) error {
	if _, err := user.Lookup(name); err == nil {
		return nil
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
	if _, lerr := user.Lookup(name); lerr == nil {
		return nil // made now, perhaps by a test binary running beside this one
	}
	return fmt.Errorf("useradd %s: %v\n%s", name, err, out)
}

func chownTree(dir, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

// FreeAddr is a loopback host:port free at the time of the call, for a
// server a test starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
