// Package arch holds tests of the code's shape: which packages may depend
// on which.
package arch

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/keygrid/keygrid-hsm/"

// domain are the packages that know no wire format and no HTTP: the key
// service, the providers, the store and the audit log.
var domain = []string{
	"internal/service",
	"internal/provider/...",
	"internal/store/...",
	"internal/audit",
	"internal/kgerr",
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	args := []string{"list", "-deps=false", "-json=ImportPath,Imports,Deps"}
	for _, p := range patterns {
		args = append(args, "./"+p)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var ps []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		t.Fatal("go list found no packages")
	}
	return ps
}

// TestDomainKnowsNoWire: the domain packages do not depend on the REST wire
// types (not even through another package) nor on any front end, and do not
// import net/http themselves.
func TestDomainKnowsNoWire(t *testing.T) {
	forbidden := []string{module + "pkg/apitypes", module + "pkg/client", module + "internal/api",
		module + "internal/xks", module + "internal/httpstack", module + "internal/server"}
	for _, p := range list(t, domain...) {
		for _, f := range forbidden {
			if slices.Contains(p.Deps, f) {
				t.Errorf("%s depends on %s", p.ImportPath, f)
			}
		}
		if slices.Contains(p.Imports, "net/http") {
			t.Errorf("%s imports net/http", p.ImportPath)
		}
	}
}

// TestCheckerSeesViolations makes sure the check above can fail: the REST
// front end does depend on the wire types.
func TestCheckerSeesViolations(t *testing.T) {
	ps := list(t, "internal/api")
	if !slices.Contains(ps[0].Deps, module+"pkg/apitypes") || !slices.Contains(ps[0].Imports, "net/http") {
		t.Fatalf("go list output not understood: %+v", ps[0].ImportPath)
	}
}
