package server

import (
	"errors"
	"reflect"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/config"
)

// Every field of a configured principal reaches auth, under the same name
// with the same value: a field added to one and not the other fails here.
func TestPrincipalSpecsCarryEveryField(t *testing.T) {
	cp := config.Principal{Name: "n", Role: "operator", TokenSHA256: "h", TokenFile: "f", TokenEnv: "e",
		ClientCertSubject: "CN=x", Keys: []string{"k-*"}, Providers: []string{"hsm"}, RatePerSecond: 2.5, Burst: 7}
	cv := reflect.ValueOf(cp)
	for i := range cv.NumField() {
		if cv.Field(i).IsZero() {
			t.Fatalf("the test leaves config.Principal.%s unset", cv.Type().Field(i).Name)
		}
	}
	specs := principalSpecs([]config.Principal{cp})
	if len(specs) != 1 {
		t.Fatalf("%d specs", len(specs))
	}
	sv := reflect.ValueOf(specs[0])
	if sv.NumField() != cv.NumField() {
		t.Fatalf("auth.PrincipalSpec has %d fields, config.Principal %d", sv.NumField(), cv.NumField())
	}
	for i := range cv.NumField() {
		name := cv.Type().Field(i).Name
		f := sv.FieldByName(name)
		if !f.IsValid() || !reflect.DeepEqual(f.Interface(), cv.Field(i).Interface()) {
			t.Errorf("field %s: config %v, auth %v", name, cv.Field(i), f)
		}
	}
}

// A bad principal entry stops the server with a config error naming the
// field, as every other configuration error does.
func TestBadPrincipalIsConfigError(t *testing.T) {
	cfg := &config.Config{Auth: config.Auth{Principals: []config.Principal{
		{Name: "a", Role: "admin", TokenEnv: "KEYGRID_TEST_UNSET_PRINCIPAL_TOKEN"},
	}}}
	_, err := newAuthenticator(cfg, nil)
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Field != "auth.principals[0].token_env" {
		t.Fatalf("newAuthenticator: %v, want a config error naming auth.principals[0].token_env", err)
	}
	if err.Error() != "config: auth.principals[0].token_env: environment variable KEYGRID_TEST_UNSET_PRINCIPAL_TOKEN is unset or shorter than 16 characters" {
		t.Fatalf("message %q", err)
	}
}
