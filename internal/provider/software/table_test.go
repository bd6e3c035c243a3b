package software

import (
	"crypto/rand"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/providertest"
)

// Every algorithm of package alg is in the table or documented as not
// performed, and each entry has the calls of what its algorithm does.
func TestEveryAlgorithmIsInTheTable(t *testing.T) {
	for a, f := range performers {
		info, err := alg.Lookup(string(a))
		if err != nil {
			t.Errorf("the table has %q, which package alg does not know", a)
			continue
		}
		if _, ok := notPerformed[a]; ok {
			t.Errorf("%s is in the table and documented as not performed", a)
		}
		var want []use
		switch {
		case info.Kind == alg.KindSign:
			want = []use{useSign}
		case info.Kind == alg.KindEncrypt && info.KeyType == alg.RSA:
			want = []use{useDecrypt} // encryption with the public key is the service's
		case info.Kind == alg.KindEncrypt:
			want = []use{useEncrypt, useDecrypt}
		case info.Kind == alg.KindWrap:
			want = []use{useWrap, useUnwrap}
		}
		for _, u := range []use{useSign, useEncrypt, useDecrypt, useWrap, useUnwrap} {
			if f.does(u) != slices.Contains(want, u) {
				t.Errorf("%s: the table does %s: %v, want %v", a, u, f.does(u), slices.Contains(want, u))
			}
		}
	}
	for _, a := range alg.All() {
		_, performed := performers[a]
		why, documented := notPerformed[a]
		switch {
		case !performed && !documented:
			t.Errorf("%s is neither in the table nor in notPerformed", a)
		case documented && strings.TrimSpace(why) == "":
			t.Errorf("notPerformed gives no reason for %s", a)
		}
	}
}

// The full table yields what the provider offered before the table: every
// algorithm, every key spec.
func TestCapabilitiesFromTable(t *testing.T) {
	c := capabilities(performers)
	if !slices.Equal(c.Algorithms, alg.All()) {
		t.Errorf("algorithms %v, want %v", c.Algorithms, alg.All())
	}
	if len(c.Missing) != 0 {
		t.Errorf("missing %v, want none", c.Missing)
	}
	if !slices.EqualFunc(c.KeyTypes, keyTypes, func(x, y provider.KeyTypeCaps) bool {
		return x.Type == y.Type && slices.Equal(x.Sizes, y.Sizes) && slices.Equal(x.Curves, y.Curves)
	}) {
		t.Errorf("key types %+v, want %+v", c.KeyTypes, keyTypes)
	}
}

// A provider whose table lacks some algorithms does not list them, nor the
// key specs only they used, and passes the conformance suite, which then
// checks that each missing algorithm is refused with UNSUPPORTED_ALGORITHM:
// with a key it applies to (RSA-OAEP-256 on RSA, A128GCM on an AES-128 key
// kept for AES-KWP) and without one (ES512 and EdDSA, whose keys are no
// longer listed).
func TestConformanceWithPartOfTheTable(t *testing.T) {
	drop := []alg.Algorithm{alg.RSAOAEP256, alg.A128GCM, alg.ES512, alg.EdDSA}
	table := maps.Clone(performers)
	for _, a := range drop {
		delete(table, a)
	}
	c := capabilities(table)
	for _, a := range drop {
		if slices.Contains(c.Algorithms, a) {
			t.Errorf("capabilities list %s, which the table lacks", a)
		}
		if c.Missing[a] == "" {
			t.Errorf("capabilities give no reason for missing %s", a)
		}
	}
	for _, kt := range c.KeyTypes {
		if kt.Type == alg.Ed25519 || slices.Contains(kt.Curves, "P-521") {
			t.Errorf("capabilities list %s %v keys, which no algorithm of the table uses", kt.Type, kt.Curves)
		}
		if kt.Type == alg.AES && !slices.Equal(kt.Sizes, []int{128, 256}) {
			t.Errorf("AES sizes %v, want 128 and 256 (AES-KWP uses both)", kt.Sizes)
		}
	}
	mk := make([]byte, 32)
	rand.Read(mk)
	providertest.Run(t, func(t *testing.T) provider.Provider {
		p, err := openWithTable("software-part", t.TempDir(), mk, table)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		return p
	})
}
