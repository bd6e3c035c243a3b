package pkcs11

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseURI feeds arbitrary strings to the PKCS#11 URI parser: it never
// panics, fails only with ErrBadURI, and what it accepts renders (String)
// to a URI that parses to the same token, id and object.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=keygrid;id=%01%02%ff;object=my-key",
		"pkcs11:token=a%20b;id=%41?pin-value=1234",
		"pkcs11:id=x",
		"pkcs11:id=%4",
		"pkcs11:id=%zz",
		"pkcs11:token=a;token=b;id=%01",
		"pkcs11:;;id=%01;;",
		"pkcs11:object=o",
		"pkcs11:",
		"pkcs11:id",
		"pkcs11:unknown=1;id=%00",
		"pkcs12:id=%01",
		URI{Token: "t;=?%", ID: []byte{0, 1, 255}, Object: "o b/c"}.String(),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, ErrBadURI) {
				t.Fatalf("ParseURI(%q): error %v is not ErrBadURI", s, err)
			}
			return
		}
		if len(u.ID) == 0 {
			t.Fatalf("ParseURI(%q) accepted a URI without an id", s)
		}
		r := u.String()
		v, err := ParseURI(r)
		if err != nil || v.Token != u.Token || !bytes.Equal(v.ID, u.ID) || v.Object != u.Object {
			t.Fatalf("ParseURI(%q) = %+v renders %q, which parses to %+v, %v", s, u, r, v, err)
		}
	})
}
