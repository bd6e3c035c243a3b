package e2e

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// auditRecords reads a replica's audit log (in its data directory).
func (r *replica) auditRecords(t *testing.T) []map[string]any {
	t.Helper()
	cfg, err := config.Load(r.cfgPath, config.Flags{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(cfg.Audit.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// countOps counts the audit records of op with outcome, by key id, over
// the logs of replicas.
func countOps(t *testing.T, op, outcome string, rs ...*replica) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range rs {
		for _, m := range r.auditRecords(t) {
			if m["operation"] == op && m["outcome"] == outcome {
				out[m["key_id"].(string)]++
			}
		}
	}
	return out
}

// Keys scheduled for deletion through A and B with a one-second window are
// destroyed by the sweepers of both, which run all the while: each key
// once, with one key_destroyed record in the two audit logs together; the
// token objects are gone and the names free.
func testReplicasDeletionOnce(t *testing.T, b *replicaBed) {
	a, bb, _ := b.startPair(t)
	ctx := context.Background()
	var keys []*apitypes.Key
	for i := 0; i < 6; i++ {
		k, err := a.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: b.n("rep-del-%d", i), KeySpec: ecSpec})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if objs := tokenObjects(t, b.n("rep-del-")); len(objs) != 12 {
		t.Fatalf("%d token objects, want 12", len(objs))
	}
	for i, k := range keys {
		r := []*replica{a, bb}[i%2]
		d, err := r.C.DeleteKey(ctx, k.Name, client.DeleteOptions{PendingWindow: time.Second})
		if err != nil || d.State != "pending_deletion" {
			t.Fatalf("delete %s on %s: %+v %v", k.Name, r.name, d, err)
		}
	}
	for _, k := range keys {
		waitGone(t, a.C, k.Name)
		waitGone(t, bb.C, k.Name)
	}
	if objs := tokenObjects(t, b.n("rep-del-")); len(objs) != 0 {
		t.Fatalf("token objects left: %+v", objs)
	}
	destroyed := countOps(t, "key_destroyed", "success", a, bb)
	for _, k := range keys {
		if destroyed[k.ID] != 1 {
			t.Errorf("key %s: %d key_destroyed records across the replicas, want 1", k.Name, destroyed[k.ID])
		}
	}
	if failed := countOps(t, "key_destroyed", "failure", a, bb); len(failed) != 0 {
		t.Errorf("failed destructions: %v", failed)
	}
	if _, err := bb.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: keys[0].Name, KeySpec: ecSpec}); err != nil {
		t.Fatalf("the name of a destroyed key is not free: %v", err)
	}
}

// A is killed with SIGKILL after its sweeper destroyed a key's token
// objects and before it removed the record: a trigger on the record's
// DELETE holds that statement (pg_sleep) until the process is gone. The
// record stays, deleting; a gateway restarted on the same database and
// token finishes the destruction: the key is 404, its name free, and the
// destruction audited once.
func testReplicasDestructionKilled(t *testing.T, b *replicaBed) {
	dsn := b.pg.NewDatabase(t)
	a := b.start(t, "A", dsn)
	ctx := context.Background()
	name := b.n("rep-killed-del")
	k, err := a.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: name, KeySpec: ecSpec})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		`CREATE FUNCTION keygrid_test_stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(600); RETURN OLD; END $$`,
		fmt.Sprintf(`CREATE TRIGGER keygrid_test_stall BEFORE DELETE ON keys FOR EACH ROW WHEN (OLD.name = '%s') EXECUTE FUNCTION keygrid_test_stall()`, name),
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if objs := tokenObjects(t, name); len(objs) != 2 {
		t.Fatalf("%d token objects before the deletion, want 2", len(objs))
	}
	if _, err := a.C.DeleteKey(ctx, name, client.DeleteOptions{PendingWindow: time.Second}); err != nil {
		t.Fatal(err)
	}
	// The sweeper claims the key, destroys the objects, and stalls in the
	// record's DELETE.
	stalled := func() bool {
		var n int
		err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event = 'PgSleep' AND query LIKE 'DELETE FROM keys%'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	deadline := time.Now().Add(30 * time.Second)
	for !stalled() {
		if time.Now().After(deadline) {
			t.Fatal("the sweeper did not reach the record's DELETE within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if objs := tokenObjects(t, name); len(objs) != 0 {
		t.Fatalf("token objects while the record's delete is held: %+v, want none (the token goes first)", objs)
	}
	a.kill(t)
	// The dead process's statement: end it (its transaction rolls back),
	// then take the trigger away.
	for _, q := range []string{
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'`,
		`DROP TRIGGER keygrid_test_stall ON keys`, `DROP FUNCTION keygrid_test_stall()`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var state string
	if err := db.QueryRowContext(ctx, `SELECT state FROM keys WHERE id = $1`, k.ID).Scan(&state); err != nil || state != "deleting" {
		t.Fatalf("the record after the kill: %q, %v; want it still there, deleting", state, err)
	}

	a2 := b.start(t, "A-restarted", dsn)
	if _, err := a2.C.Sign(ctx, name, apitypes.SignRequest{Data: []byte("x")}); err == nil {
		t.Fatal("a key being destroyed signed")
	}
	waitGone(t, a2.C, name)
	if n := countOps(t, "key_destroyed", "success", a, a2)[k.ID]; n != 1 {
		t.Fatalf("%d key_destroyed records, want 1 (by the restarted gateway)", n)
	}
	if n := countOps(t, "key_destroyed", "success", a2)[k.ID]; n != 1 {
		t.Fatal("the restarted gateway did not record the destruction it finished")
	}
	if _, err := a2.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: name, KeySpec: ecSpec}); err != nil {
		t.Fatalf("the name is not free after the destruction: %v", err)
	}
}

// Keys with a two-second rotation period (the floor lowered), served by A
// and B whose rotators both run: every rotation happens once — the
// versions of each key are the rotate records of the two logs together
// plus the first — each version has its own token objects, and the keys
// sign with their newest version through either replica.
func testReplicasRotationOnce(t *testing.T, b *replicaBed) {
	a, bb, _ := b.startPair(t)
	ctx := context.Background()
	var keys []*apitypes.Key
	for i := 0; i < 3; i++ {
		k, err := a.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: b.n("rep-rot-%d", i), KeySpec: ecSpec})
		if err != nil {
			t.Fatal(err)
		}
		period := "2s"
		if _, err := bb.C.UpdateKey(ctx, k.Name, apitypes.UpdateKeyRequest{RotationPeriod: apitypes.Value(period)}); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	time.Sleep(5 * time.Second)
	for _, k := range keys {
		off := "0s"
		for attempt := 0; ; attempt++ { // a PATCH that meets a rotation is a 409: read again and retry
			_, err := a.C.UpdateKey(ctx, k.Name, apitypes.UpdateKeyRequest{RotationPeriod: apitypes.Value(off)})
			if err == nil {
				break
			}
			if attempt == 20 {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(time.Second) // a rotation claimed before the PATCH completes
	rotations := countOps(t, "rotate", "success", a, bb)
	for _, k := range keys {
		g, err := bb.C.GetKey(ctx, k.Name)
		if err != nil {
			t.Fatal(err)
		}
		if g.Version < 2 || len(g.Versions) != g.Version || rotations[k.ID] != g.Version-1 {
			t.Fatalf("key %s: version %d with %d versions and %d rotate records; want at least 2, one record per rotation",
				k.Name, g.Version, len(g.Versions), rotations[k.ID])
		}
		for _, r := range []*replica{a, bb} {
			s, err := r.C.Sign(ctx, k.Name, apitypes.SignRequest{Data: []byte("x")})
			if err != nil || s.KeyVersion != g.Version {
				t.Fatalf("sign on %s: %+v %v, want version %d", r.name, s, err, g.Version)
			}
		}
	}
	if failed := countOps(t, "rotate", "failure", a, bb); len(failed) != 0 {
		t.Fatalf("failed rotations: %v", failed)
	}
	checkNoOrphans(t, a.C, b.n("rep-rot-"))
}
