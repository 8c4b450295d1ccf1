package main

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

// KEK administration logs in as the Security Officer (only the SO can make
// a key CKA_TRUSTED) and as the user (to see private halves and pick the
// next version). One application holds one login at a time, so these
// commands open an Admin and never a Provider.

var kekCreateSpec = spec{
	path:  "kek create",
	usage: "kek create --label NAME [--type rsa3072|rsa2048|rsa4096|aes256|aes128] [--allow-exposed-at-rest]",
	about: `Creates a key-encryption key named NAME on the token, or a new version of
it if NAME exists (exported keys name the exact version they were wrapped
under; new exports use the newest). An RSA KEK is a pair: a trusted public
half that wraps (OAEP only), and a private, non-extractable half that
unwraps (OAEP only), a private object that the token protects at rest under
the user PIN. An AES KEK wraps and unwraps (key wrap only); the SO can make
only public objects, and a token that stores public objects in clear
(SoftHSM) keeps its value readable in its storage without any PIN: there,
the default is rsa3072 and an AES KEK needs --allow-exposed-at-rest. Needs
the SO PIN and the user PIN.`,
	examples: `hsmkeys kek create --label backup
hsmkeys kek create --label escrow --type rsa4096 --so-pin-file so.pin --pin-file user.pin
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' kek create --label backup --json`,
}

var kekImportSpec = spec{
	path:  "kek import",
	usage: "kek import --label NAME --secret-file FILE [--allow-exposed-at-rest]",
	about: `Makes an AES KEK named NAME (or a new version of it) from a value an
administrator supplies: a key ceremony, a KEK shared with another site.
FILE must be mode 0600 and hold exactly 16 or 32 bytes, raw or as hex on one
line. The value goes to the token and is cleared from memory; it is never
printed. On a token that stores public objects in clear (SoftHSM) the KEK
would be readable in its storage without any PIN, so this needs
--allow-exposed-at-rest there. Needs the SO PIN and the user PIN.`,
	examples: `hsmkeys kek import --label site-b --secret-file /run/secrets/site-b.kek
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' kek import --label site-b --secret-file site-b.hex --so-pin-file /run/secrets/so-pin`,
}

var kekImportPublicSpec = spec{
	path:  "kek import-public",
	usage: "kek import-public --label NAME --pem FILE",
	about: `Makes another party's RSA public key a trusted, wrap-only KEK named NAME:
session keys and messages can then be sent to that party, who decrypts with
its private key (openssl cms -decrypt -inkey key.pem). FILE holds a PEM
"PUBLIC KEY", "RSA PUBLIC KEY" or "CERTIFICATE" (the certificate is not
verified: only its key is used). Needs the SO PIN and the user PIN.`,
	examples: `openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -subj /CN=partner
hsmkeys kek import-public --label partner --pem cert.pem
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' kek import-public --label partner --pem partner-pub.pem
hsmkeys encrypt --kek partner -i report.pdf -o report.cms`,
}

var kekTypes = "rsa3072|rsa2048|rsa4096|aes256|aes128"

func (c *cli) cmdKEKCreate(ctx context.Context, args []string) error {
	fs := c.newFlags(kekCreateSpec)
	label := fs.String("label", "", "the KEK's `NAME`")
	typ := fs.String("type", "", "`TYPE`: "+kekTypes+" (default: rsa3072 where public objects are in clear at rest, as on SoftHSM; else aes256)")
	exposed := fs.Bool("allow-exposed-at-rest", false, "allow an AES KEK on a token that stores it in clear at rest")
	c.pinFlags(fs, true)
	if err := c.parseKEKFlags(fs, args, label); err != nil {
		return err
	}
	var t provider.KEKType
	if *typ != "" {
		var err error
		t, err = provider.ParseKEKType(*typ)
		if err != nil || t == provider.KEKRSAPublic {
			return usagef(fs.spec.path, "--type %q: want one of %s", *typ, kekTypes)
		}
	}
	return c.adminKEK(ctx, "created", func(a *provider.Admin) (*provider.KEK, error) {
		if t == 0 {
			t = a.Profile().DefaultKEKType()
		}
		return a.CreateKEKWith(ctx, *label, t, provider.KEKOptions{AllowExposedAtRest: *exposed})
	})
}

func (c *cli) cmdKEKImport(ctx context.Context, args []string) error {
	fs := c.newFlags(kekImportSpec)
	label := fs.String("label", "", "the KEK's `NAME`")
	secret := fs.String("secret-file", "", "`FILE` holding the KEK value (mode 0600; 16 or 32 bytes, raw or hex)")
	exposed := fs.Bool("allow-exposed-at-rest", false, "allow the AES KEK on a token that stores it in clear at rest")
	c.pinFlags(fs, true)
	if err := c.parseKEKFlags(fs, args, label); err != nil {
		return err
	}
	if *secret == "" {
		return usagef(fs.spec.path, "kek import needs --secret-file FILE")
	}
	return c.adminKEK(ctx, "imported", func(a *provider.Admin) (*provider.KEK, error) {
		return a.ImportKEKWith(ctx, *label, *secret, provider.KEKOptions{AllowExposedAtRest: *exposed})
	})
}

func (c *cli) cmdKEKImportPublic(ctx context.Context, args []string) error {
	fs := c.newFlags(kekImportPublicSpec)
	label := fs.String("label", "", "the KEK's `NAME`")
	pemFile := fs.String("pem", "", "`FILE` with a PEM PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE")
	c.pinFlags(fs, true)
	if err := c.parseKEKFlags(fs, args, label); err != nil {
		return err
	}
	if *pemFile == "" {
		return usagef(fs.spec.path, "kek import-public needs --pem FILE")
	}
	pub, err := readRSAPublicKey(*pemFile)
	if err != nil {
		return err
	}
	return c.adminKEK(ctx, "imported", func(a *provider.Admin) (*provider.KEK, error) {
		return a.ImportPublicKEK(ctx, *label, pub)
	})
}

// parseKEKFlags parses a kek create/import command line: no operands, a
// label.
func (c *cli) parseKEKFlags(fs *flags, args []string, label *string) error {
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	if *label == "" {
		return usagef(fs.spec.path, "%s needs --label NAME", fs.spec.path)
	}
	return nil
}

// adminKEK runs one KEK-making operation as the SO and reports the KEK.
func (c *cli) adminKEK(ctx context.Context, verb string, fn func(*provider.Admin) (*provider.KEK, error)) error {
	a, err := c.openAdmin(ctx, true)
	if err != nil {
		return err
	}
	defer a.Close()
	k, err := fn(a)
	if err != nil {
		return err
	}
	if c.json {
		j := kekToJSON(k)
		j.URI = k.URI(a.Token())
		return c.writeJSON(j)
	}
	fmt.Fprintf(c.stdout, "%s kek %q version %d (%s, id %s) on token %s\n", verb, k.Label, k.Version, kekTypeName(k), hex.EncodeToString(k.ID), a.Token())
	if k.ExposedAtRest {
		fmt.Fprintf(c.stderr, "hsmkeys: warning: %s\n", exposedWarning(k, a.Profile()))
	}
	return nil
}

// exposedWarning says plainly what an AES KEK on a token that keeps public
// objects in clear gives away.
func exposedWarning(k *provider.KEK, prof provider.TokenProfile) string {
	return fmt.Sprintf("kek %q version %d is EXPOSED AT REST: %s stores public objects in clear, so anyone with a copy of the token's storage, and no pin, has this kek and every key and message wrapped under it", k.Label, k.Version, prof.Name)
}

// readRSAPublicKey reads the first PEM block of a kind we take.
func readRSAPublicKey(path string) (*rsa.PublicKey, error) {
	data, err := readCapped(path, maxPEMFile)
	if err != nil {
		return nil, err
	}
	var seen []string
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		seen = append(seen, block.Type)
		var key any
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, block.Type, err)
		}
		pub, ok := key.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s: a %T, not an RSA public key", path, key)
		}
		return pub, nil
	}
	if len(seen) == 0 {
		return nil, errors.New(path + ": no PEM block found")
	}
	return nil, fmt.Errorf("%s: PEM blocks %s, none a PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE", path, strings.Join(seen, ", "))
}

// kekJSON is how kek commands describe a KEK to scripts.
type kekJSON struct {
	Label             string   `json:"label"`
	Version           int      `json:"version"`
	ID                string   `json:"id"`
	Type              string   `json:"type"`
	Bits              int      `json:"bits"`
	Trusted           bool     `json:"trusted"`
	CanUnwrap         bool     `json:"can_unwrap"`
	TemplatesEnforced bool     `json:"templates_enforced"`
	Restricted        bool     `json:"restricted"`
	Outdated          bool     `json:"outdated"`
	ExposedAtRest     bool     `json:"exposed_at_rest"`
	Foreign           bool     `json:"foreign"`
	Problems          []string `json:"problems"`
	URI               string   `json:"uri,omitempty"` // RFC 7512 object URI of this version; --kek takes it
}

func kekToJSON(k *provider.KEK) kekJSON {
	problems := k.Problems
	if problems == nil {
		problems = []string{}
	}
	return kekJSON{
		Label: k.Label, Version: k.Version, ID: hex.EncodeToString(k.ID), Type: kekTypeName(k), Bits: k.Bits,
		Trusted: k.Trusted, CanUnwrap: k.CanUnwrap(), TemplatesEnforced: templatesEnforced(k), Problems: problems,
		Restricted: k.Restricted, Outdated: k.Outdated, ExposedAtRest: k.ExposedAtRest,
	}
}

func foreignToJSON(f provider.ForeignObject) kekJSON {
	return kekJSON{Label: f.Label, ID: hex.EncodeToString(f.ID), Type: "foreign " + f.Class, Foreign: true, Problems: []string{f.Why}}
}

func kekTypeName(k *provider.KEK) string {
	if k.Type == 0 {
		return "unknown"
	}
	return k.Type.String()
}

// templatesEnforced: the KEK carries both templates hsmkeys requires.
func templatesEnforced(k *provider.KEK) bool { return k.TemplatesEnforced }
