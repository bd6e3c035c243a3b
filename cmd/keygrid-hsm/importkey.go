package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// importVersion is keys import --version-of KEY: the material of --in,
// wrapped here under the wrapping key of the key's provider, becomes the
// key's new current version.
func (c *cli) importVersion(ctx context.Context, cl *client.Client, key, in, keyType string, named bool) error {
	if in == "" || named {
		return errors.New("keys import --version-of: --in is required, --name and --provider are not (the key has them)")
	}
	material, err := readImportKey(in, keyType)
	if err != nil {
		return err
	}
	k, err := cl.ImportVersion(ctx, key, material)
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
