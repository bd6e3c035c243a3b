package pkcs11

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/providertest"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// Every algorithm of package alg is in the mechanism table or documented as
// not performed, and each entry's uses fit what its algorithm does.
func TestEveryAlgorithmIsInTheTable(t *testing.T) {
	seen := map[alg.Algorithm]bool{}
	for _, m := range mechanisms {
		a, err := alg.Lookup(string(m.alg))
		if err != nil {
			t.Errorf("the table has %q, which package alg does not know", m.alg)
			continue
		}
		if seen[m.alg] {
			t.Errorf("the table has %s twice", m.alg)
		}
		seen[m.alg] = true
		if _, ok := notPerformed[m.alg]; ok {
			t.Errorf("%s is in the table and documented as not performed", m.alg)
		}
		var want use
		switch {
		case a.Kind == alg.KindSign, a.Kind == alg.KindMAC:
			want = useSign
		case a.Kind == alg.KindEncrypt && a.KeyType == alg.RSA:
			want = useDecrypt // encryption with the public key is the service's
		case a.Kind == alg.KindEncrypt:
			want = useEncrypt | useDecrypt
		case a.Kind == alg.KindWrap:
			want = useWrap | useUnwrap
		}
		if m.uses != want {
			t.Errorf("%s: the table uses %s for %s, want %s", m.alg, m.mech.name, m.uses, want)
		}
		if !strings.HasPrefix(m.mech.name, "CKM_") {
			t.Errorf("%s: mechanism %+v has no name", m.alg, m.mech)
		}
		if !slices.ContainsFunc(keyGens, func(g keyGen) bool { return g.typ == a.KeyType }) {
			t.Errorf("%s: no key generation for %s keys", m.alg, a.KeyType)
		}
	}
	for _, a := range alg.All() {
		why, documented := notPerformed[a]
		switch {
		case !seen[a] && !documented:
			t.Errorf("%s is neither in the mechanism table nor in notPerformed", a)
		case documented && strings.TrimSpace(why) == "":
			t.Errorf("notPerformed gives no reason for %s", a)
		}
	}
}

// The doctor checks every mechanism the table and the key generations use,
// each once.
func TestUsedMechanisms(t *testing.T) {
	used := usedMechanisms()
	var want []mech
	for _, g := range keyGens {
		want = append(want, g.mech)
	}
	for _, m := range mechanisms {
		want = append(want, m.mech)
	}
	for _, m := range want {
		if n := len(slices.DeleteFunc(slices.Clone(used), func(x mech) bool { return x != m })); n != 1 {
			t.Errorf("usedMechanisms lists %s %d times, want once", m.name, n)
		}
	}
	if len(used) != 15 {
		t.Errorf("usedMechanisms lists %d mechanisms, want the 15 the gateway uses: %v", len(used), used)
	}
}

// fullToken reports every mechanism the table uses with every flag.
func fullToken() map[uint]pkcs11.MechanismInfo {
	all := uint(pkcs11.CKF_SIGN | pkcs11.CKF_ENCRYPT | pkcs11.CKF_DECRYPT | pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP |
		pkcs11.CKF_GENERATE | pkcs11.CKF_GENERATE_KEY_PAIR)
	out := map[uint]pkcs11.MechanismInfo{
		pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN: {MinKeySize: 512, MaxKeySize: 16384, Flags: pkcs11.CKF_GENERATE_KEY_PAIR},
		pkcs11.CKM_EC_KEY_PAIR_GEN:       {MinKeySize: 112, MaxKeySize: 521, Flags: pkcs11.CKF_GENERATE_KEY_PAIR},
		ckmECEdwardsKeyPairGen:           {MinKeySize: 255, MaxKeySize: 255, Flags: pkcs11.CKF_GENERATE_KEY_PAIR},
		pkcs11.CKM_AES_KEY_GEN:           {MinKeySize: 16, MaxKeySize: 32, Flags: pkcs11.CKF_GENERATE},
	}
	for _, m := range mechanisms {
		out[m.mech.code] = pkcs11.MechanismInfo{Flags: all}
	}
	return out
}

// The capabilities a token profile yields: the table intersected with the
// token's mechanism list, flags and key sizes, and the probes.
func TestDeriveCapabilities(t *testing.T) {
	rsa := provider.KeyTypeCaps{Type: alg.RSA, Sizes: []int{2048, 3072, 4096}}
	ec := provider.KeyTypeCaps{Type: alg.EC, Curves: []string{"P-256", "P-384", "P-521"}}
	ed := provider.KeyTypeCaps{Type: alg.Ed25519}
	aes := provider.KeyTypeCaps{Type: alg.AES, Sizes: []int{128, 256}}
	// Every algorithm of package alg but those the provider does not
	// perform at all (notPerformed) and HMAC, whose mechanisms fullToken
	// does not list (TestSoftHSMCapabilitiesFromTable has them on a token).
	all := slices.DeleteFunc(alg.All(), func(a alg.Algorithm) bool {
		_, no := notPerformed[a]
		i, _ := alg.Lookup(string(a))
		return no || i.Kind == alg.KindMAC
	})
	without := func(drop ...alg.Algorithm) []alg.Algorithm {
		return slices.DeleteFunc(slices.Clone(all), func(a alg.Algorithm) bool { return slices.Contains(drop, a) })
	}
	cases := []struct {
		name     string
		change   func(m map[uint]pkcs11.MechanismInfo)
		refuse   []alg.Algorithm // the probes refuse these
		inexact  bool            // the AES-KWP probe finds the SoftHSM2 2.6 defect
		keyTypes []provider.KeyTypeCaps
		algs     []alg.Algorithm
		missing  map[alg.Algorithm]string // substrings of the reasons
		wrap8    bool
	}{
		{name: "ok every mechanism", keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, aes}, algs: all},
		{name: "ok OAEP with SHA-1 only (SoftHSM2)", refuse: []alg.Algorithm{alg.RSAOAEP256},
			keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, aes}, algs: without(alg.RSAOAEP256),
			missing: map[alg.Algorithm]string{alg.RSAOAEP256: "probe refused RSA-OAEP-256"}},
		{name: "ok no CKM_AES_GCM (p11-kit 0.24)", change: func(m map[uint]pkcs11.MechanismInfo) { delete(m, pkcs11.CKM_AES_GCM) },
			keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, aes}, algs: without(alg.A128GCM, alg.A256GCM),
			missing: map[alg.Algorithm]string{alg.A128GCM: "token lacks CKM_AES_GCM for encryption and decryption",
				alg.A256GCM: "token lacks CKM_AES_GCM for encryption and decryption"}},
		{name: "ok CKM_AES_GCM that only decrypts", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_AES_GCM] = pkcs11.MechanismInfo{Flags: pkcs11.CKF_DECRYPT}
		}, keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, aes}, algs: without(alg.A128GCM, alg.A256GCM),
			missing: map[alg.Algorithm]string{alg.A256GCM: "token lacks CKM_AES_GCM"}},
		{name: "ok no AES mechanism but key generation: no AES keys listed", change: func(m map[uint]pkcs11.MechanismInfo) {
			delete(m, pkcs11.CKM_AES_GCM)
			delete(m, pkcs11.CKM_AES_KEY_WRAP_PAD)
		}, keyTypes: []provider.KeyTypeCaps{rsa, ec, ed}, algs: without(alg.A128GCM, alg.A256GCM, alg.AESKWP),
			missing: map[alg.Algorithm]string{alg.AESKWP: "token lacks CKM_AES_KEY_WRAP_PAD for wrapping and unwrapping"}},
		{name: "ok Ed25519 keys but no CKM_EDDSA: no Ed25519 keys listed", change: func(m map[uint]pkcs11.MechanismInfo) { delete(m, ckmEdDSA) },
			keyTypes: []provider.KeyTypeCaps{rsa, ec, aes}, algs: without(alg.EdDSA),
			missing: map[alg.Algorithm]string{alg.EdDSA: "token lacks CKM_EDDSA for signing"}},
		{name: "ok no Edwards key generation (CloudHSM, tpm2-pkcs11)", change: func(m map[uint]pkcs11.MechanismInfo) {
			delete(m, ckmECEdwardsKeyPairGen)
			delete(m, ckmEdDSA)
		}, keyTypes: []provider.KeyTypeCaps{rsa, ec, aes}, algs: without(alg.EdDSA),
			missing: map[alg.Algorithm]string{alg.EdDSA: "token lacks CKM_EC_EDWARDS_KEY_PAIR_GEN"}},
		{name: "ok RSA up to 3072 bits", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN] = pkcs11.MechanismInfo{MinKeySize: 1024, MaxKeySize: 3072, Flags: pkcs11.CKF_GENERATE_KEY_PAIR}
		}, keyTypes: []provider.KeyTypeCaps{{Type: alg.RSA, Sizes: []int{2048, 3072}}, ec, ed, aes}, algs: all},
		{name: "ok RSA of no size the gateway uses", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN] = pkcs11.MechanismInfo{MinKeySize: 512, MaxKeySize: 1024, Flags: pkcs11.CKF_GENERATE_KEY_PAIR}
		}, keyTypes: []provider.KeyTypeCaps{ec, ed, aes},
			algs:    without(alg.RS256, alg.RS384, alg.RS512, alg.PS256, alg.PS384, alg.PS512, alg.RSAOAEP, alg.RSAOAEP256),
			missing: map[alg.Algorithm]string{alg.PS256: "makes none of the key sizes"}},
		{name: "ok EC up to P-384", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_EC_KEY_PAIR_GEN] = pkcs11.MechanismInfo{MinKeySize: 256, MaxKeySize: 384, Flags: pkcs11.CKF_GENERATE_KEY_PAIR}
		}, keyTypes: []provider.KeyTypeCaps{rsa, {Type: alg.EC, Curves: []string{"P-256", "P-384"}}, ed, aes}, algs: without(alg.ES512),
			missing: map[alg.Algorithm]string{alg.ES512: "token does not make P-521 keys"}},
		{name: "ok key generation without its flag", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_EC_KEY_PAIR_GEN] = pkcs11.MechanismInfo{MinKeySize: 256, MaxKeySize: 521}
		}, keyTypes: []provider.KeyTypeCaps{rsa, ed, aes}, algs: without(alg.ES256, alg.ES384, alg.ES512),
			missing: map[alg.Algorithm]string{alg.ES384: "token lacks CKM_EC_KEY_PAIR_GEN"}},
		{name: "ok AES sizes in bits", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_AES_KEY_GEN] = pkcs11.MechanismInfo{MinKeySize: 128, MaxKeySize: 256, Flags: pkcs11.CKF_GENERATE}
		}, keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, aes}, algs: all},
		{name: "ok AES-256 only, no key wrap: A128GCM not listed", change: func(m map[uint]pkcs11.MechanismInfo) {
			m[pkcs11.CKM_AES_KEY_GEN] = pkcs11.MechanismInfo{MinKeySize: 32, MaxKeySize: 32, Flags: pkcs11.CKF_GENERATE}
			delete(m, pkcs11.CKM_AES_KEY_WRAP_PAD)
		}, keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, {Type: alg.AES, Sizes: []int{256}}}, algs: without(alg.A128GCM, alg.AESKWP),
			missing: map[alg.Algorithm]string{alg.A128GCM: "token does not make AES-128 keys"}},
		{name: "ok AES-KWP exact only for multiples of 8 (SoftHSM2 2.6)", inexact: true,
			keyTypes: []provider.KeyTypeCaps{rsa, ec, ed, aes}, algs: all, wrap8: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			infos := fullToken()
			if tc.change != nil {
				tc.change(infos)
			}
			var probed []alg.Algorithm
			caps := deriveCaps(infos, func(m mechanism, a alg.Info, caps *provider.Capabilities) string {
				probed = append(probed, a.Name)
				if a.Name == alg.AESKWP && tc.inexact {
					caps.WrapMultipleOf8 = true
				}
				if slices.Contains(tc.refuse, a.Name) {
					return "probe refused " + string(a.Name)
				}
				return ""
			})
			if !slices.Equal(sorted(caps.Algorithms), tc.algs) {
				t.Errorf("algorithms %v, want %v", caps.Algorithms, tc.algs)
			}
			if !capsEqual(caps.KeyTypes, tc.keyTypes) {
				t.Errorf("key types %+v, want %+v", caps.KeyTypes, tc.keyTypes)
			}
			for _, a := range all {
				why, missing := caps.Missing[a]
				if listed := slices.Contains(caps.Algorithms, a); listed == missing {
					t.Errorf("%s: listed %v, missing %v (%q); want exactly one", a, listed, missing, why)
				}
			}
			for a, want := range tc.missing {
				if !strings.Contains(caps.Missing[a], want) {
					t.Errorf("%s missing because %q, want a reason with %q", a, caps.Missing[a], want)
				}
			}
			if caps.WrapMultipleOf8 != tc.wrap8 {
				t.Errorf("WrapMultipleOf8 = %v, want %v", caps.WrapMultipleOf8, tc.wrap8)
			}
			for _, a := range probed {
				m, _ := mechanismOf(a)
				if m.probe == nil {
					t.Errorf("probed %s, whose entry has no probe", a)
				}
				if i, ok := infos[m.mech.code]; !ok || i.Flags&m.uses.flags() != m.uses.flags() {
					t.Errorf("probed %s on a token that lacks %s", a, m.mech.name)
				}
			}
		})
	}
}

func sorted(as []alg.Algorithm) []alg.Algorithm {
	out := slices.Clone(as)
	slices.Sort(out)
	return out
}

func capsEqual(a, b []provider.KeyTypeCaps) bool {
	return slices.EqualFunc(a, b, func(x, y provider.KeyTypeCaps) bool {
		return x.Type == y.Type && slices.Equal(x.Sizes, y.Sizes) && slices.Equal(x.Curves, y.Curves)
	})
}

// On SoftHSM2 the derived capabilities are what the gateway offered before
// the table: every algorithm but RSA-OAEP-256, in the same order, and every
// key spec.
func TestSoftHSMCapabilitiesFromTable(t *testing.T) {
	p := openTest(t, 4)
	c := p.Capabilities()
	want := []alg.Algorithm{alg.RS256, alg.RS384, alg.RS512, alg.PS256, alg.PS384, alg.PS512, alg.RSAOAEP,
		alg.ES256, alg.ES384, alg.ES512, alg.EdDSA, alg.A128GCM, alg.A256GCM, alg.AESKWP, alg.HS256, alg.HS384, alg.HS512}
	if !slices.Equal(c.Algorithms, want) {
		t.Errorf("algorithms %v, want %v", c.Algorithms, want)
	}
	if got := slices.Sorted(maps.Keys(c.Missing)); !slices.Equal(got, []alg.Algorithm{alg.RSAOAEP256}) {
		t.Errorf("missing %v, want only RSA-OAEP-256", c.Missing)
	}
	wantKT := []provider.KeyTypeCaps{{Type: alg.RSA, Sizes: []int{2048, 3072, 4096}},
		{Type: alg.EC, Curves: []string{"P-256", "P-384", "P-521"}}, {Type: alg.Ed25519}, {Type: alg.AES, Sizes: []int{128, 256}},
		{Type: alg.HMAC, Sizes: []int{256, 384, 512}}}
	if !capsEqual(c.KeyTypes, wantKT) {
		t.Errorf("key types %+v, want %+v", c.KeyTypes, wantKT)
	}
}

// The conformance suite through p11-kit's RPC (p11-kit-client.so in front
// of a SoftHSM2 token of its own): a second real module, whose mechanism
// list lacks what the RPC does not carry (p11-kit 0.24: CKM_AES_GCM,
// CKM_AES_KEY_WRAP_PAD, the Edwards mechanisms). What it lacks is not
// advertised, and the suite checks every operation of it is refused with
// UNSUPPORTED_ALGORITHM.
func TestConformanceThroughP11Kit(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	client, _ := testbed.StartP11Kit(t, "keygrid-p11kit", testPIN)
	cfg := testConfig(t, 4)
	cfg.LibraryPath, cfg.TokenLabel = client, "keygrid-p11kit"
	// RSA-4096 generation through the RPC on a loaded machine can take
	// longer than the default 5 s.
	cfg.OperationTimeout = duration.Duration(time.Minute)
	open := func(t *testing.T) *Provider {
		p, err := Open(context.Background(), "p11kit", TypePKCS11, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := open(t)
	c := p.Capabilities()
	p.Close()
	if len(c.Missing) <= 1 {
		t.Fatalf("through p11-kit only %v is missing: this test wants a module that lacks more than SoftHSM2", c.Missing)
	}
	for a, why := range c.Missing {
		t.Logf("not advertised through p11-kit: %s (%s)", a, why)
	}
	if _, gcm := p.mechs[pkcs11.CKM_AES_GCM]; !gcm {
		err := c.CheckSpec(alg.Spec{Type: alg.AES, Size: 256})
		if !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) || !strings.Contains(err.Error(), "CKM_AES_GCM") {
			t.Errorf("AES-256 keys on a module without AES mechanisms: %v; want UNSUPPORTED_ALGORITHM naming CKM_AES_GCM", err)
		}
	}
	providertest.Run(t, func(t *testing.T) provider.Provider { return open(t) })
}
