package testbed

import (
	"database/sql"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A cluster starts, gives each test a database of its own that a DSN with
// the password reaches over TCP, and Stop removes everything.
func TestPostgresClusterLifecycle(t *testing.T) {
	p := NewPostgres(t)
	dsn := p.NewDatabase(t)
	if !strings.Contains(dsn, p.Password) || !strings.Contains(dsn, "127.0.0.1:"+strconv.Itoa(p.Port)) {
		t.Fatalf("DSN %q", dsn)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var one int
	if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query: %d %v", one, err)
	}
	bad := strings.Replace(dsn, p.Password, "wrong", 1)
	if bdb, _ := sql.Open("pgx", bad); bdb.Ping() == nil {
		t.Fatal("a wrong password was accepted over TCP")
	} else {
		bdb.Close()
	}
	db.Close()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		t.Fatalf("cluster directory left: %v", err)
	}
}

// A test process that dies without Stop (a panic, a timeout) does not
// leave its cluster running: the watchdog stops and removes it.
func TestPostgresWatchdogStopsAnOrphanedCluster(t *testing.T) {
	if os.Getenv("KEYGRID_TESTBED_ORPHAN") == "1" {
		p, err := StartPostgres()
		if err != nil {
			t.Fatal(err)
		}
		os.Stdout.WriteString("cluster " + p.Dir + " " + strconv.Itoa(p.Port) + "\n")
		os.Exit(3) // no Stop, no cleanup
	}
	RequirePostgres(t)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPostgresWatchdogStopsAnOrphanedCluster$")
	cmd.Env = append(os.Environ(), "KEYGRID_TESTBED_ORPHAN=1")
	out, _ := cmd.Output()
	var dir string
	var port int
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "cluster" {
			dir = f[1]
			port, _ = strconv.Atoi(f[2])
		}
	}
	if dir == "" || !strings.HasPrefix(filepath.Base(dir), "keygrid-pg-") {
		t.Fatalf("the child did not start a cluster: %s", out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, statErr := os.Stat(dir)
		c, dialErr := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if dialErr == nil {
			c.Close()
		}
		if os.IsNotExist(statErr) && dialErr != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s after its test process exited, the cluster in %s still runs or exists", dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
