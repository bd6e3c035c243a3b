package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// keysImportOptions are the flags of keys import.
type keysImportOptions struct {
	name, provider, in, keyType, algorithm, usage string
	versionOf                                     string
	extractable                                   bool
}

func (o *keysImportOptions) register(f *pflag.FlagSet) {
	f.StringVar(&o.name, "name", "", "key name (or give it as NAME)")
	f.StringVar(&o.provider, "provider", "", "provider (required: its wrapping key wraps the material)")
	f.StringVar(&o.in, "in", "", "the key: a PEM or DER private key, or raw AES/HMAC bytes with --type (required)")
	f.StringVarP(&o.keyType, "type", "t", "", "AES or HMAC for raw material (private keys: read from the key)")
	f.StringVarP(&o.algorithm, "algorithm", "a", "", "default algorithm")
	f.StringVar(&o.usage, "usage", "", "comma-separated usages")
	f.BoolVar(&o.extractable, "extractable", false, "import the key extractable (exportable with keys export)")
	f.StringVar(&o.versionOf, "version-of", "", "import the material as the new current version of this KEY (no NAME, --provider: the key has them)")
}

// runKeysImport reads the key material of --in, has the client wrap it for
// the provider's wrapping key and imports it: as a new key, or with
// --version-of as that key's new current version. It prints the key.
func runKeysImport(ctx context.Context, c *cli, o keysImportOptions) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	material, err := readImportKey(o.in, o.keyType)
	if err != nil {
		return err
	}
	var k *apitypes.Key
	if o.versionOf != "" {
		k, err = cl.ImportVersion(ctx, o.versionOf, material)
	} else {
		spec := apitypes.KeySpec{KeyType: o.keyType, Algorithm: o.algorithm, Extractable: o.extractable}
		if o.usage != "" {
			spec.Usage = strings.Split(o.usage, ",")
		}
		k, err = cl.Import(ctx, o.provider, o.name, spec, material)
	}
	if b, ok := material.([]byte); ok {
		clear(b)
	}
	if err != nil {
		return err
	}
	return c.printKeys([]apitypes.Key{*k})
}

// readImportKey reads the key of keys import: a PEM private key (PKCS#8,
// PKCS#1 or SEC 1), a DER PKCS#8 key, or with keyType AES or HMAC the raw
// bytes of a secret key.
func readImportKey(path, keyType string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	switch strings.ToUpper(keyType) {
	case "AES", "HMAC":
		return b, nil
	case "":
	default:
		return nil, fmt.Errorf("--type %s: give --type only for raw AES or HMAC material (private keys carry their type)", keyType)
	}
	defer clear(b)
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		der = blk.Bytes
		defer clear(blk.Bytes)
		switch blk.Type {
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(der)
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(der)
		case "PRIVATE KEY":
		default:
			return nil, fmt.Errorf("%s: a PEM %s is not a private key", path, blk.Type)
		}
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New(path + ": not a PKCS#8, PKCS#1 or SEC 1 private key (raw AES/HMAC material needs --type)")
	}
	return k, nil
}
