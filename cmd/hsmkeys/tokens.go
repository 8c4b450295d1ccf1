package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/hsmkeys/hsmkeys/provider"
)

var tokensSpec = spec{
	path:  "tokens",
	usage: "tokens",
	about: `Lists the slots of the PKCS#11 module and the tokens in them: label,
serial, model, manufacturer, flags and the token's RFC 7512 URI, which
--uri takes back (add ?module-path=... when the module is not otherwise
named). Needs no PIN.`,
	examples: `hsmkeys tokens
hsmkeys --module /usr/lib/softhsm/libsofthsm2.so tokens
hsmkeys --uri 'pkcs11:?module-path=/usr/lib/softhsm/libsofthsm2.so' --json tokens
hsmkeys --uri 'pkcs11:?module-name=softhsm2' tokens`,
}

type tokenJSON struct {
	Slot         uint     `json:"slot"`
	Label        string   `json:"label"`
	Serial       string   `json:"serial"`
	Model        string   `json:"model"`
	Manufacturer string   `json:"manufacturer"`
	Initialized  bool     `json:"initialized"`
	Flags        []string `json:"flags"`
	URI          string   `json:"uri"` // "" for an uninitialised token
}

// tokenFlags are the token flags the provider tells us about.
func tokenFlags(t provider.TokenInfo) []string {
	if t.Initialized {
		return []string{"initialized"}
	}
	return []string{"uninitialized"}
}

func (c *cli) cmdTokens(ctx context.Context, args []string) error {
	fs := c.newFlags(tokensSpec)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	mod, err := c.modulePath()
	if err != nil {
		return err
	}
	ts, err := provider.TokensOf(ctx, provider.Config{Module: mod, InitArgs: c.initArgs})
	if err != nil {
		return err
	}
	if c.json {
		out := make([]tokenJSON, len(ts))
		for i, t := range ts {
			out[i] = tokenJSON{t.Slot, t.Label, t.Serial, t.Model, t.Manufacturer, t.Initialized, tokenFlags(t), t.URI()}
		}
		return c.writeJSON(out)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tLABEL\tSERIAL\tMODEL\tMANUFACTURER\tFLAGS\tURI")
	for _, t := range ts {
		label := fmt.Sprintf("%q", t.Label)
		if !t.Initialized {
			label = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Slot, label, dash(t.Serial), dash(t.Model), dash(t.Manufacturer), tokenFlags(t)[0], dash(t.URI()))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var initTokenSpec = spec{
	path:  "init-token",
	usage: "init-token --label NAME --so-pin-file FILE --pin-file FILE",
	about: `Initialises a token: sets its label, its Security Officer PIN and its user
PIN, erasing everything on it. For SoftHSM and test tokens; real HSMs are
initialised with their vendor's tools. The PINs come from files (or
HSMKEYS_SO_PIN_FILE / HSMKEYS_PIN_FILE, HSMKEYS_SO_PIN / HSMKEYS_PIN), never
from the command line. The first slot without a token is used.`,
	examples: `hsmkeys --module /usr/lib/softhsm/libsofthsm2.so init-token --label hsmkeys --so-pin-file so.pin --pin-file user.pin
scripts/softhsm-setup.sh     # makes the PIN files and runs this for you`,
}

func (c *cli) cmdInitToken(ctx context.Context, args []string) error {
	fs := c.newFlags(initTokenSpec)
	label := fs.String("label", "", "the new token's `NAME`")
	c.pinFlags(fs, true)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	if *label == "" {
		return usagef(fs.spec.path, "init-token needs --label NAME")
	}
	so := initPIN(c.soPINFile, "HSMKEYS_SO_PIN", "HSMKEYS_SO_PIN_FILE")
	user := initPIN(c.pinFile, "HSMKEYS_PIN", "HSMKEYS_PIN_FILE")
	if so == nil || user == nil {
		return usagef(fs.spec.path, "init-token needs the SO PIN and the user PIN (--so-pin-file, --pin-file)")
	}
	// Erasing a token is never done on a module nobody named: through
	// p11-kit's proxy, "the first free slot" could belong to any module.
	attrs := map[string]string{}
	if c.useURI() {
		attrs = uriAttrs(c.uri)
	}
	if c.module == "" && attrs["module-path"] == "" && attrs["module-name"] == "" {
		return &usageError{msg: "init-token erases a token and needs its module named",
			hint: "give --module PATH, HSMKEYS_MODULE, or module-path or module-name in --uri"}
	}
	mod, err := c.modulePath()
	if err != nil {
		return err
	}
	t, err := provider.InitToken(ctx, provider.InitTokenConfig{Module: mod, InitArgs: c.initArgs, Label: *label, SOPIN: so, UserPIN: user})
	if err != nil {
		return err
	}
	if c.json {
		return c.writeJSON(map[string]any{"slot": t.Slot, "label": t.Label, "serial": t.Serial})
	}
	fmt.Fprintf(c.stdout, "initialised token %s\n", t)
	return nil
}

var selftestSpec = spec{
	path:  "selftest",
	usage: "selftest [--pin-file FILE]",
	about: `Opens the token, generates an AES-256 session key, seals and opens a
message on the token, shows that a tampered copy is refused, destroys the
key and shows that the token no longer holds it.`,
	examples: `hsmkeys selftest
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' selftest --pin-file user.pin`,
}

func (c *cli) cmdSelftest(ctx context.Context, args []string) error {
	fs := c.newFlags(selftestSpec)
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	p, err := c.openProvider(ctx, provider.ExportNone, 0) // runs under either policy
	if err != nil {
		return err
	}
	defer p.Close()
	step := func(format string, a ...any) {
		if !c.json {
			fmt.Fprintf(c.stdout, format+"\n", a...)
		}
	}
	step("opened token %s", p.Token())
	if err := selftest(ctx, p, step); err != nil {
		return err
	}
	if c.json {
		return c.writeJSON(map[string]any{"token": p.Token().Label, "ok": true})
	}
	step("selftest passed")
	return nil
}

func selftest(ctx context.Context, p *provider.Provider, step func(string, ...any)) error {
	before, err := p.CountSessionKeys(ctx)
	if err != nil {
		return err
	}
	k, err := p.Generate(ctx, provider.AES256)
	if err != nil {
		return err
	}
	defer k.Destroy(context.WithoutCancel(ctx))
	how := "never extractable"
	if k.Exportable() {
		how = "extractable only wrapped under trusted keks"
	}
	step("generated %v (a sensitive session object, %s)", k, how)
	msg, aad := []byte("a message sealed on the token"), []byte("selftest")
	sealed, err := k.Seal(ctx, msg, aad)
	if err != nil {
		return err
	}
	step("sealed %d bytes into %d (nonce, ciphertext, tag)", len(msg), len(sealed))
	opened, err := k.Open(ctx, sealed, aad)
	if err != nil {
		return err
	}
	if !bytes.Equal(opened, msg) {
		return errors.New("selftest: opened message differs from the sealed one")
	}
	step("opened it again: %q", opened)
	sealed[len(sealed)-1] ^= 1
	if _, err := k.Open(ctx, sealed, aad); !errors.Is(err, provider.ErrAuthentication) {
		return fmt.Errorf("selftest: a tampered message was not refused: %v", err)
	}
	step("a tampered copy is refused: authentication failed")
	if err := k.Destroy(ctx); err != nil {
		return err
	}
	if _, err := k.Seal(ctx, msg, nil); !errors.Is(err, provider.ErrKeyDestroyed) {
		return fmt.Errorf("selftest: a destroyed key still answered: %v", err)
	}
	after, err := p.CountSessionKeys(ctx)
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("selftest: %d session keys on the token after destroy, %d before", after, before)
	}
	step("destroyed the key: the token holds %d session keys, as before", after)
	return nil
}
