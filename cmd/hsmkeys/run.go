package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

const usage = `hsmkeys: session keys kept inside a PKCS#11 token

Usage:
  hsmkeys [--module PATH] [--token LABEL | --uri PKCS11-URI] [--json] COMMAND [flags]

Commands:
  tokens       list the tokens the module offers
  init-token   initialise a token (SoftHSM and test tokens): --label NAME --so-pin-file F --pin-file F
  selftest     generate a session key, seal and open a message, destroy the key, check it is gone

Environment:
  HSMKEYS_MODULE, HSMKEYS_TOKEN, HSMKEYS_URI   defaults for --module, --token, --uri
  HSMKEYS_PIN, HSMKEYS_PIN_FILE                the user PIN, or a file holding it
  HSMKEYS_SO_PIN, HSMKEYS_SO_PIN_FILE          the Security Officer PIN, or a file holding it

Examples:
  hsmkeys --module /usr/lib/softhsm/libsofthsm2.so tokens
  hsmkeys --uri 'pkcs11:token=ci?module-path=/usr/lib/softhsm/libsofthsm2.so' selftest
`

// exit codes
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	module, token  string
	uri            string
	json           bool
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("hsmkeys", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.module, "module", os.Getenv("HSMKEYS_MODULE"), "PKCS#11 module path")
	fs.StringVar(&c.token, "token", os.Getenv("HSMKEYS_TOKEN"), "token label")
	fs.StringVar(&c.uri, "uri", os.Getenv("HSMKEYS_URI"), "PKCS#11 URI (RFC 7512)")
	fs.BoolVar(&c.json, "json", false, "JSON output")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		return c.fail(&usageError{err.Error()})
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	switch rest[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	case "tokens":
		err = c.cmdTokens(ctx, rest[1:])
	case "init-token":
		err = c.cmdInitToken(ctx, rest[1:])
	case "selftest":
		err = c.cmdSelftest(ctx, rest[1:])
	default:
		err = &usageError{fmt.Sprintf("unknown command %q", rest[0])}
	}
	return c.fail(err)
}

// fail prints err as "hsmkeys: error: ..." with a hint where one helps, and
// returns the exit code.
func (c *cli) fail(err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(c.stderr, "hsmkeys: error: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(c.stderr, "hsmkeys: hint: run 'hsmkeys help' for usage")
		return exitUsage
	}
	if h := hint(err); h != "" {
		fmt.Fprintf(c.stderr, "hsmkeys: hint: %s\n", h)
	}
	return exitFail
}

func hint(err error) string {
	var pe *provider.PINError
	var tnf *provider.TokenNotFoundError
	switch {
	case errors.As(err, &pe):
		if pe.Locked {
			return "the pin is locked; the Security Officer must reset it"
		}
		return "check HSMKEYS_PIN or the file named by --pin-file / HSMKEYS_PIN_FILE; the token counts wrong tries"
	case errors.As(err, &tnf):
		if len(tnf.Tokens) > 0 {
			return fmt.Sprintf("pick one with --token %q or --uri 'pkcs11:token=%s'", tnf.Tokens[0].Label, tnf.Tokens[0].Label)
		}
		return "initialise a token first (scripts/softhsm-setup.sh for SoftHSM)"
	case errors.Is(err, provider.ErrPINSource):
		return "set HSMKEYS_PIN_FILE or pass --pin-file with a readable file"
	case errors.Is(err, provider.ErrConfig) && strings.Contains(err.Error(), "module"):
		return "set --module or HSMKEYS_MODULE to the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so"
	}
	return ""
}

func (c *cli) writeJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) config(pinFile string) provider.Config {
	cfg := provider.Config{Module: c.module, TokenLabel: c.token, URI: c.uri}
	if c.uri != "" && c.module == os.Getenv("HSMKEYS_MODULE") {
		// Let the URI's module-path win over the environment default.
		cfg.Module = ""
		if !strings.Contains(c.uri, "module-path=") {
			cfg.Module = c.module
		}
	}
	if c.uri != "" && c.token == os.Getenv("HSMKEYS_TOKEN") {
		cfg.TokenLabel = ""
	}
	cfg.PIN = pinSource(pinFile, "HSMKEYS_PIN", "HSMKEYS_PIN_FILE")
	if cfg.Module == "" && c.uri == "" {
		cfg.Module = defaultModule()
	}
	return cfg
}

// pinSource picks --pin-file, then $env, then $envFile; nil if none is set.
func pinSource(flagFile, env, envFile string) provider.PINSource {
	switch {
	case flagFile != "":
		return provider.PINFile(flagFile)
	case os.Getenv(env) != "":
		return provider.PINEnv(env)
	case os.Getenv(envFile) != "":
		return provider.PINFile(os.Getenv(envFile))
	}
	return nil
}

func defaultModule() string {
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			return m
		}
	}
	return ""
}

func (c *cli) cmdTokens(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tokens", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return &usageError{"usage: hsmkeys tokens"}
	}
	cfg := c.config("")
	if cfg.Module == "" {
		cfg.Module = c.module
	}
	ts, err := provider.Tokens(cfg.Module)
	if err != nil {
		return err
	}
	if c.json {
		type tok struct {
			Slot         uint   `json:"slot"`
			Label        string `json:"label"`
			Serial       string `json:"serial"`
			Model        string `json:"model"`
			Manufacturer string `json:"manufacturer"`
			Initialized  bool   `json:"initialized"`
		}
		out := make([]tok, len(ts))
		for i, t := range ts {
			out[i] = tok{t.Slot, t.Label, t.Serial, t.Model, t.Manufacturer, t.Initialized}
		}
		return c.writeJSON(out)
	}
	for _, t := range ts {
		if !t.Initialized {
			fmt.Fprintf(c.stdout, "slot %d\t(token not initialised)\tmodel %s\n", t.Slot, t.Model)
			continue
		}
		fmt.Fprintf(c.stdout, "slot %d\tlabel %q\tserial %s\tmodel %s\n", t.Slot, t.Label, t.Serial, t.Model)
	}
	return nil
}

func (c *cli) cmdInitToken(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("init-token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	label := fs.String("label", "", "token label")
	soPINFile := fs.String("so-pin-file", "", "file holding the new SO PIN")
	pinFile := fs.String("pin-file", "", "file holding the new user PIN")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *label == "" {
		return &usageError{"usage: hsmkeys init-token --label NAME --so-pin-file FILE --pin-file FILE"}
	}
	so := pinSource(*soPINFile, "HSMKEYS_SO_PIN", "HSMKEYS_SO_PIN_FILE")
	user := pinSource(*pinFile, "HSMKEYS_PIN", "HSMKEYS_PIN_FILE")
	if so == nil || user == nil {
		return &usageError{"init-token needs the SO PIN and the user PIN (--so-pin-file, --pin-file)"}
	}
	mod := c.module
	if mod == "" {
		mod = defaultModule()
	}
	t, err := provider.InitToken(ctx, provider.InitTokenConfig{Module: mod, Label: *label, SOPIN: so, UserPIN: user})
	if err != nil {
		return err
	}
	if c.json {
		return c.writeJSON(map[string]any{"slot": t.Slot, "label": t.Label, "serial": t.Serial})
	}
	fmt.Fprintf(c.stdout, "initialised token %s\n", t)
	return nil
}

func (c *cli) cmdSelftest(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("selftest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pinFile := fs.String("pin-file", "", "file holding the user PIN")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return &usageError{"usage: hsmkeys selftest [--pin-file FILE]"}
	}
	cfg := c.config(*pinFile)
	if cfg.PIN == nil {
		return fmt.Errorf("%w: no user pin: set HSMKEYS_PIN_FILE or --pin-file", provider.ErrPINSource)
	}
	p, err := provider.Open(ctx, cfg)
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
	before, err := p.CountSessionKeys(ctx)
	if err != nil {
		return err
	}
	k, err := p.Generate(ctx, provider.AES256)
	if err != nil {
		return err
	}
	step("generated %v (sensitive, non-extractable, a session object)", k)
	msg := []byte("a message sealed on the token")
	aad := []byte("selftest")
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
	if c.json {
		return c.writeJSON(map[string]any{"token": p.Token().Label, "ok": true})
	}
	step("selftest passed")
	return nil
}
