package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// testKillStormAudited is the attack of issue 16: kill -9 a gateway while
// eight creates run in parallel, let another replica's reconciler finish
// what was cut short, and check that every active key has its creation in
// an audit log (the create's own record, or the reconciler's
// reconcile_activate), written by the replica that made it active.
func testKillStormAudited(t *testing.T, b *replicaBed) {
	dsn := b.pg.NewDatabase(t)
	a := b.start(t, "A", dsn)
	prefix := b.n("storm-")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := a.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: fmt.Sprintf("%s%d-%d", prefix, w, i), KeySpec: ecSpec})
				cancel()
				if err != nil {
					return // the process is gone
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond) // creates in flight
	a.kill(t)
	close(stop)
	wg.Wait()

	bb := b.start(t, "B", dsn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		pending := 0
		for _, k := range keysByPrefix(t, bb.C, prefix) {
			if k.State == "pending" {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys still pending a minute after the kill", pending)
		}
		time.Sleep(200 * time.Millisecond)
	}
	audited := map[string]bool{}
	for _, r := range []*replica{a, bb} {
		for _, e := range replicaAudit(t, r) {
			if e.Outcome == "success" && (e.Operation == "create" || e.Operation == "reconcile_activate") {
				audited[e.KeyID] = true
			}
		}
	}
	active := 0
	for _, k := range keysByPrefix(t, bb.C, prefix) {
		if k.State != "active" {
			continue
		}
		active++
		if !audited[k.ID] {
			t.Errorf("key %s (%s) is active with no creation record in any audit log", k.Name, k.ID)
		}
	}
	if active == 0 {
		t.Fatal("no key was made before the kill: the storm tested nothing")
	}
	t.Logf("%d active keys, each with its creation record", active)
}

var dataDirLine = regexp.MustCompile(`(?m)^data_dir: (\S+)$`)

type stormRecord struct {
	Operation string `json:"operation"`
	Outcome   string `json:"outcome"`
	KeyID     string `json:"key_id"`
}

// replicaAudit reads a replica's audit log (a kill may leave a last line
// cut short: it is not a record).
func replicaAudit(t *testing.T, r *replica) []stormRecord {
	t.Helper()
	cfg, err := os.ReadFile(r.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	m := dataDirLine.FindSubmatch(cfg)
	if m == nil {
		t.Fatalf("no data_dir in %s", r.cfgPath)
	}
	raw, err := os.ReadFile(filepath.Join(string(m[1]), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []stormRecord
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e stormRecord
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}
