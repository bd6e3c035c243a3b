package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// These tests cover the logic SoftHSM2 cannot drive: CloudHSM's branches,
// injected CKR codes, the backoff schedule.

func TestResolveDefaultsByType(t *testing.T) {
	t.Setenv("CLOUDHSM_PIN", "cu_app:s3cret")
	t.Setenv("PLAIN_PIN", "1234")
	cases := []struct {
		name, typ string
		cfg       Config
		check     func(t *testing.T, r resolved)
		wantErr   string
	}{
		{name: "ok aws-cloudhsm defaults", typ: TypeAWSCloudHSM, cfg: Config{},
			check: func(t *testing.T, r resolved) {
				if r.LibraryPath != CloudHSMLibrary || r.PinEnv != CloudHSMPinEnv || !r.firstSlotDefault ||
					r.busyRetries != 3 || r.maxGCMBytes != 16*1024 || r.pin != "cu_app:s3cret" {
					t.Fatalf("%+v", r)
				}
			}},
		{name: "ok nested pkcs11 block", typ: TypeAWSCloudHSM, cfg: Config{PKCS11: &Settings{LibraryPath: "/x.so", TokenLabel: "p", MaxSessions: 7}},
			check: func(t *testing.T, r resolved) {
				if r.LibraryPath != "/x.so" || r.TokenLabel != "p" || r.MaxSessions != 7 {
					t.Fatalf("%+v", r)
				}
			}},
		{name: "ok plain pkcs11 has no cloud behaviour", typ: TypePKCS11, cfg: Config{Settings: Settings{LibraryPath: "/x.so", PinEnv: "PLAIN_PIN"}},
			check: func(t *testing.T, r resolved) {
				if r.firstSlotDefault || r.busyRetries != 0 || r.maxGCMBytes != 0 || r.MaxSessions != 16 || r.opTimeout != 5*time.Second {
					t.Fatalf("%+v", r)
				}
			}},
		{name: "fail pkcs11 without library", typ: TypePKCS11, cfg: Config{Settings: Settings{PinEnv: "PLAIN_PIN"}}, wantErr: "library_path"},
		{name: "fail cloudhsm pin without user", typ: TypeAWSCloudHSM, cfg: Config{Settings: Settings{PinEnv: "PLAIN_PIN"}}, wantErr: "CU_user:password"},
		{name: "fail conflicting nested value", typ: TypePKCS11, cfg: Config{Settings: Settings{LibraryPath: "/a.so"}, PKCS11: &Settings{LibraryPath: "/b.so"}}, wantErr: "both"},
		{name: "fail pin env and file", typ: TypePKCS11, cfg: Config{Settings: Settings{LibraryPath: "/a.so", PinEnv: "PLAIN_PIN", PinFile: "/f"}}, wantErr: "not both"},
		{name: "fail negative operation timeout", typ: TypePKCS11, cfg: Config{Settings: Settings{LibraryPath: "/a.so", PinEnv: "PLAIN_PIN"}, OperationTimeout: duration.Duration(-time.Second)}, wantErr: "operation_timeout"},
		{name: "fail too many sessions", typ: TypePKCS11, cfg: Config{Settings: Settings{LibraryPath: "/a.so", PinEnv: "PLAIN_PIN", MaxSessions: 5000}}, wantErr: "max_sessions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := c.cfg.resolve(c.typ, "providers.x.config")
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, c.wantErr)
				}
				if strings.Contains(err.Error(), "1234") {
					t.Fatal("PIN in error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, r)
		})
	}
}

func TestPINFromFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(f, []byte("cu:pw\n"), 0o600)
	r, err := Config{Settings: Settings{PinFile: f}}.resolve(TypeAWSCloudHSM, "x")
	if err != nil || r.pin != "cu:pw" {
		t.Fatalf("pin %q, %v", r.pin, err)
	}
	os.WriteFile(f, []byte("\n"), 0o600)
	if _, err := (Config{Settings: Settings{PinFile: f}}).resolve(TypeAWSCloudHSM, "x"); !errors.Is(err, errNoPIN) {
		t.Fatalf("empty pin file: %v", err)
	}
}

func TestSelectSlot(t *testing.T) {
	toks := []tokenInfo{{slot: 11, label: "alpha", serial: "s1"}, {slot: 12, label: "beta", serial: "s2"}, {slot: 13, label: "beta", serial: "s3"}}
	u := func(v uint) *uint { return &v }
	cases := []struct {
		name  string
		s     Settings
		cloud bool
		want  uint
		err   bool
	}{
		{"ok label", Settings{TokenLabel: "alpha"}, false, 11, false},
		{"ok label and serial", Settings{TokenLabel: "beta", TokenSerial: "s3"}, false, 13, false},
		{"ok serial alone", Settings{TokenSerial: "s2"}, false, 12, false},
		{"ok slot id", Settings{SlotID: u(12)}, false, 12, false},
		{"ok slot id narrows an ambiguous label", Settings{TokenLabel: "beta", SlotID: u(13)}, false, 13, false},
		{"ok label decides when slot id matches nothing", Settings{TokenLabel: "alpha", SlotID: u(0)}, false, 11, false},
		{"ok label decides when slot id is another token's", Settings{TokenLabel: "alpha", SlotID: u(12)}, false, 11, false},
		{"fail ambiguous label", Settings{TokenLabel: "beta"}, false, 0, true},
		{"fail ambiguous label, slot id matches nothing", Settings{TokenLabel: "beta", SlotID: u(0)}, true, 0, true},
		{"fail label and serial of two tokens", Settings{TokenLabel: "alpha", TokenSerial: "s2"}, false, 0, true},
		{"fail unknown label", Settings{TokenLabel: "gamma"}, false, 0, true},
		{"fail unknown slot id", Settings{SlotID: u(0)}, false, 0, true},
		{"fail nothing set and several tokens", Settings{}, false, 0, true},
		{"fail cloudhsm label that matches nothing among several tokens", Settings{TokenLabel: "keygrid-partition", SlotID: u(0)}, true, 0, true},
		{"ok cloudhsm label that matches wins", Settings{TokenLabel: "alpha"}, true, 11, false},
	}
	for _, c := range cases {
		// In both listing orders: the answer never depends on which token
		// the module lists first.
		for _, order := range []string{"listed", "reversed"} {
			t.Run(c.name+" "+order, func(t *testing.T) {
				ts := slices.Clone(toks)
				if order == "reversed" {
					slices.Reverse(ts)
				}
				got, err := selectSlot(ts, c.s, c.cloud)
				if c.err {
					if err == nil {
						t.Fatalf("selected slot %d", got.slot)
					}
					for _, tk := range toks {
						if !strings.Contains(err.Error(), fmt.Sprintf("%q (serial %s, slot %d)", tk.label, tk.serial, tk.slot)) {
							t.Errorf("the error does not list token %q: %v", tk.label, err)
						}
					}
					return
				}
				if err != nil || got.slot != c.want {
					t.Fatalf("slot %d, %v; want %d", got.slot, err, c.want)
				}
			})
		}
	}
	if _, err := selectSlot(nil, Settings{}, true); err == nil {
		t.Fatal("no tokens: want an error")
	}
	one, err := selectSlot(toks[:1], Settings{}, false)
	if err != nil || one.slot != 11 {
		t.Fatalf("single token with no selection: %v %v", one, err)
	}
	// CloudHSM's first-slot fallback: only with a single token.
	only := []tokenInfo{{slot: 1, label: "some-sdk-label", serial: "x"}}
	if got, err := selectSlot(only, Settings{TokenLabel: "keygrid-partition", SlotID: u(0)}, true); err != nil || got.slot != 1 {
		t.Fatalf("cloudhsm with a single token: %v %v", got, err)
	}
	if _, err := selectSlot(only, Settings{TokenLabel: "keygrid-partition"}, false); err == nil {
		t.Fatal("pkcs11 type: an unmatched label must not fall back to the only token")
	}
}

// The seed's aws-cloudhsm block (slot_id 0, token_label "kg2") on a module
// with tokens kg1 and kg2 and no slot 0 (SoftHSM2): kg2, in either listing
// order, never kg1.
func TestSelectSlotSeedBlockPicksLabel(t *testing.T) {
	zero := uint(0)
	s := Settings{SlotID: &zero, TokenLabel: "kg2"}
	for _, ts := range [][]tokenInfo{
		{{slot: 1804289383, label: "kg1", serial: "a"}, {slot: 846930886, label: "kg2", serial: "b"}},
		{{slot: 846930886, label: "kg2", serial: "b"}, {slot: 1804289383, label: "kg1", serial: "a"}},
	} {
		got, err := selectSlot(ts, s, true)
		if err != nil || got.label != "kg2" {
			t.Fatalf("tokens %v: picked %+v, %v; want kg2", ts, got, err)
		}
	}
}

func TestURIRoundTrip(t *testing.T) {
	u := URI{Token: "my token;x", ID: []byte{0x00, 0xff, 0x10, ';'}, Object: "payments/key%1"}
	s := u.String()
	if !strings.HasPrefix(s, "pkcs11:token=my%20token%3Bx;id=%00%FF%10%3B;object=payments%2Fkey%251") {
		t.Fatalf("rendered %s", s)
	}
	back, err := ParseURI(s)
	if err != nil || back.Token != u.Token || string(back.ID) != string(u.ID) || back.Object != u.Object {
		t.Fatalf("parsed %+v, %v", back, err)
	}
	for _, bad := range []string{"", "pkcs11:", "pkcs11:token=x", "http://x", "pkcs11:id=%zz", "pkcs11:id=%0", "pkcs11:id=%01;id=%02"} {
		if _, err := ParseURI(bad); !errors.Is(err, ErrBadURI) {
			t.Errorf("ParseURI(%q) = %v, want ErrBadURI", bad, err)
		}
	}
}

func TestGCMNonceChoice(t *testing.T) {
	sent := []byte("sent-iv-1234")
	written := []byte("module-iv-12")
	if got := gcmNonce(sent, written); string(got) != string(written) {
		t.Fatalf("a module that writes its own IV (CloudHSM): recorded %q", got)
	}
	if got := gcmNonce(sent, sent); string(got) != string(sent) {
		t.Fatalf("a conforming module: recorded %q", got)
	}
	if got := gcmNonce(sent, nil); string(got) != string(sent) {
		t.Fatalf("no IV readable: recorded %q", got)
	}
}

func TestFailureClasses(t *testing.T) {
	cases := []struct {
		code     uint
		cloud    bool
		class    class
		kind     opKind
		wantCode kgerr.Kind
	}{
		{pkcs11.CKR_SESSION_HANDLE_INVALID, false, classSession, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_SESSION_CLOSED, false, classSession, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_DEVICE_ERROR, false, classReset, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_DEVICE_REMOVED, false, classReset, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_TOKEN_NOT_PRESENT, false, classReset, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, false, classReset, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_USER_NOT_LOGGED_IN, false, classReset, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_FUNCTION_FAILED, true, classBusy, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_FUNCTION_FAILED, false, classOp, opOther, kgerr.KindUnavailable},
		{pkcs11.CKR_PIN_INCORRECT, false, classOp, opOther, kgerr.KindUnauthenticated},
		{pkcs11.CKR_KEY_HANDLE_INVALID, false, classOp, opOther, kgerr.KindKeyNotFound},
		{pkcs11.CKR_OBJECT_HANDLE_INVALID, false, classOp, opOther, kgerr.KindKeyNotFound},
		{pkcs11.CKR_MECHANISM_INVALID, false, classOp, opOther, kgerr.KindUnsupportedAlgorithm},
		{pkcs11.CKR_MECHANISM_PARAM_INVALID, false, classOp, opOther, kgerr.KindUnsupportedAlgorithm},
		{pkcs11.CKR_ENCRYPTED_DATA_INVALID, false, classOp, opDecrypt, kgerr.KindDecryptionFailed},
		{pkcs11.CKR_GENERAL_ERROR, false, classOp, opDecrypt, kgerr.KindDecryptionFailed},
		{pkcs11.CKR_GENERAL_ERROR, false, classOp, opOther, kgerr.KindInternal},
		{pkcs11.CKR_DATA_LEN_RANGE, false, classOp, opOther, kgerr.KindInvalidInput},
		{pkcs11.CKR_WRAPPED_KEY_INVALID, false, classOp, opUnwrap, kgerr.KindDecryptionFailed},
	}
	for _, c := range cases {
		err := pkcs11.Error(c.code)
		name := err.Error()
		if got := classify(err, c.cloud); got != c.class {
			t.Errorf("%s (cloud %v): class %d, want %d", name, c.cloud, got, c.class)
		}
		mapped := toError(err, c.kind)
		if kgerr.KindOf(mapped) != c.wantCode {
			t.Errorf("%s: code %s, want %s", name, kgerr.KindOf(mapped), c.wantCode)
		}
		if code, ok := ckrCode(mapped); !ok || code != c.code {
			t.Errorf("%s: the CKR code is not kept as the cause", name)
		}
	}
}

func TestBackoffSchedule(t *testing.T) {
	base, max := 100*time.Millisecond, 5*time.Second
	prevMax := time.Duration(0)
	for n := 1; n <= 12; n++ {
		ceil := base << (n - 1)
		if ceil > max || ceil <= 0 {
			ceil = max
		}
		for i := 0; i < 50; i++ {
			d := backoff(n, base, max)
			if d < ceil/2 || d > ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", n, d, ceil/2, ceil)
			}
		}
		if ceil < prevMax {
			t.Fatalf("attempt %d: ceiling fell", n)
		}
		prevMax = ceil
	}
}
