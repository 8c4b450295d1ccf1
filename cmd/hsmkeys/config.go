package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

// defaultModule is the module when neither a flag, a variable nor the URI
// names one: p11-kit's proxy, which offers the tokens of the modules p11-kit
// registers (provider.DefaultModule). Never SoftHSM by itself: on a host
// with softhsm2 installed for tests, that would be the wrong token. Without
// the proxy, the error lists the registered modules and says how to choose.
func defaultModule() (string, error) {
	m, err := provider.DefaultModule()
	var nm *provider.NoModuleError
	if errors.As(err, &nm) {
		return "", &hinted{err: err, hint: moduleChoiceHint(nm.Registered)}
	}
	return m, err
}

// moduleChoiceHint says how to name a module, with the registered ones.
func moduleChoiceHint(reg []provider.RegisteredModule) string {
	var b strings.Builder
	b.WriteString("set --module or HSMKEYS_MODULE to the vendor's PKCS#11 library, or module-path or module-name in --uri")
	for _, r := range reg {
		if r.Present {
			fmt.Fprintf(&b, "; for %s: --module %s or --uri 'pkcs11:?module-name=%s'", r.Name, r.Path, r.Name)
		}
	}
	return b.String()
}

// uriAttrs reads the attribute names and values of an RFC 7512 PKCS#11 URI,
// path and query alike, names lowercased. It is only a scan, to decide which
// of our flags and variables the URI overrides and to refuse a pin-value;
// the provider parses the URI for real.
func uriAttrs(uri string) map[string]string {
	attrs := map[string]string{}
	rest, ok := cutPrefixFold(uri, "pkcs11:")
	if !ok {
		return attrs
	}
	path, query, _ := strings.Cut(rest, "?")
	for _, part := range [][]string{strings.Split(path, ";"), strings.Split(query, "&")} {
		for _, kv := range part {
			if kv == "" {
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			if dk, err := url.PathUnescape(k); err == nil {
				k = dk
			}
			if dv, err := url.PathUnescape(v); err == nil {
				v = dv
			}
			attrs[strings.ToLower(strings.TrimSpace(k))] = v
		}
	}
	return attrs
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// refusePINInURI refuses a --uri carrying the PIN: a command line is seen by
// every user of the machine (ps, /proc) and kept in shell histories.
func refusePINInURI(uri string) error {
	if _, ok := uriAttrs(uri)["pin-value"]; ok {
		return &usageError{
			msg:  "--uri holds a pin-value: a PIN on a command line is visible to every user of this machine",
			hint: "remove pin-value and use pin-source=file:/path/to/pin in the URI, --pin-file FILE, or HSMKEYS_PIN_FILE",
		}
	}
	return nil
}

// useURI reports whether the URI applies: a --token flag overrides an
// HSMKEYS_URI from the environment.
func (c *cli) useURI() bool {
	return c.uri != "" && !(c.tokenSet && !c.uriSet)
}

// config is the provider configuration of the global flags and variables,
// with the user PIN source.
func (c *cli) config() (provider.Config, error) {
	cfg, attrs, err := c.tokenConfig()
	if err != nil {
		return cfg, err
	}
	pin, err := c.userPIN(attrs)
	if err != nil {
		return cfg, err
	}
	cfg.PIN = pin
	return cfg, nil
}

// modulePath is the module the flags, the URI or the default name.
func (c *cli) modulePath() (string, error) {
	cfg, attrs, err := c.tokenConfig()
	switch {
	case err != nil, cfg.Module != "":
		return cfg.Module, err
	case attrs["module-path"] != "":
		return attrs["module-path"], nil
	}
	return provider.FindModule(attrs["module-name"])
}

// tokenConfig says which module and token to open: a flag beats the URI,
// which beats a variable, which beats the default. attrs are the URI's.
func (c *cli) tokenConfig() (provider.Config, map[string]string, error) {
	cfg := provider.Config{InitArgs: c.initArgs}
	attrs := map[string]string{}
	if c.useURI() {
		cfg.URI = c.uri
		attrs = uriAttrs(c.uri)
	}
	switch {
	case c.moduleSet:
		cfg.Module = c.module
	case attrs["module-path"] != "", attrs["module-name"] != "":
		// the provider resolves them (module-name as p11-kit does)
	case c.module != "":
		cfg.Module = c.module
	default:
		m, err := defaultModule()
		if err != nil {
			return cfg, attrs, err
		}
		cfg.Module = m
	}
	_, uriToken := attrs["token"]
	_, uriSerial := attrs["serial"]
	_, uriSlot := attrs["slot-id"]
	switch {
	case c.tokenSet:
		cfg.TokenLabel = c.token
	case uriToken || uriSerial || uriSlot:
	case c.token != "":
		cfg.TokenLabel = c.token
	}
	return cfg, attrs, nil
}

// userPIN is the user PIN source: --pin-file, the URI's pin-source,
// HSMKEYS_PIN, HSMKEYS_PIN_FILE, then a prompt on the terminal. nil means
// the URI supplies it.
func (c *cli) userPIN(attrs map[string]string) (provider.PINSource, error) {
	_, uriSource := attrs["pin-source"]
	_, uriValue := attrs["pin-value"]
	if c.pinFile != "" {
		if uriSource || uriValue {
			return nil, &usageError{msg: "the PIN is given twice: by --pin-file and by the URI"}
		}
		return provider.PINFile(c.pinFile), nil
	}
	if uriSource || uriValue {
		return nil, nil
	}
	return c.pinFromEnv("user PIN", "HSMKEYS_PIN", "HSMKEYS_PIN_FILE")
}

// soPIN is the Security Officer PIN source: --so-pin-file, HSMKEYS_SO_PIN,
// HSMKEYS_SO_PIN_FILE, then a prompt on the terminal.
func (c *cli) soPIN() (provider.PINSource, error) {
	if c.soPINFile != "" {
		return provider.PINFile(c.soPINFile), nil
	}
	return c.pinFromEnv("SO PIN", "HSMKEYS_SO_PIN", "HSMKEYS_SO_PIN_FILE")
}

func (c *cli) pinFromEnv(what, env, envFile string) (provider.PINSource, error) {
	// An empty variable counts as unset, as for HSMKEYS_MODULE and the rest.
	if os.Getenv(env) != "" {
		return provider.PINEnv(env), nil
	}
	if f := os.Getenv(envFile); f != "" {
		return provider.PINFile(f), nil // an unreadable file is an error there, never an empty PIN
	}
	if canPrompt() {
		return c.promptPIN(what), nil
	}
	return nil, fmt.Errorf("%w: no %s given (and no terminal to ask on)", provider.ErrPINSource, what)
}

// initPIN is a PIN source for init-token: files or variables only, since
// a new PIN typed once could be mistyped.
func initPIN(flagFile, env, envFile string) provider.PINSource {
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

// maxPEMFile bounds a PEM input (a public key or a certificate chain): a
// few KiB each, so 1 MiB is generous and /dev/zero ends promptly.
const maxPEMFile = 1 << 20

// errTooLarge: an input is larger than any valid one.
var errTooLarge = errors.New("larger than")

// readCapped reads a whole file of at most limit bytes; more is an error,
// found after reading limit+1 bytes, not after the end of an endless file.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is %w %d bytes", path, errTooLarge, limit)
	}
	return data, nil
}

// openProvider opens the token for session keys. Commands that administer
// KEKs must not hold one: its user login would keep the SO out.
//
// policy is what the command needs: ExportTrusted for one that exports or
// imports wrapped keys (key, encrypt, decrypt, rewrap: a message's key is
// wrapped for its recipients), which is refused under --export-policy none
// (HSMKEYS_EXPORT_POLICY); ExportNone for one that works under either
// (selftest, bench of generate and seal), which then runs under the policy
// chosen, trusted by default.
func (c *cli) openProvider(ctx context.Context, policy provider.ExportPolicy, maxSessions int) (*provider.Provider, error) {
	chosen, err := c.chosenPolicy()
	if err != nil {
		return nil, err
	}
	if policy == provider.ExportTrusted && chosen == provider.ExportNone {
		return nil, withHint(fmt.Errorf("%w: this command exports or imports wrapped keys (a message's key is wrapped for its recipients), which export policy none forbids", provider.ErrPolicy),
			"run it under export policy trusted (drop --export-policy none, unset HSMKEYS_EXPORT_POLICY) on a token that 'hsmkeys doctor' shows usable for it; selftest and bench --op seal run under none")
	}
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	cfg.ExportPolicy = chosen
	cfg.MaxSessions = maxSessions
	return provider.Open(ctx, cfg)
}

// chosenPolicy is --export-policy, HSMKEYS_EXPORT_POLICY, or trusted.
func (c *cli) chosenPolicy() (provider.ExportPolicy, error) {
	if c.exportPolicy == "" {
		return provider.ExportTrusted, nil
	}
	return provider.ParseExportPolicy(c.exportPolicy)
}

// openDiagnostic opens the token for doctor: under export policy none, and
// not refused for what it lacks (provider.OpenDiagnostic).
func (c *cli) openDiagnostic(ctx context.Context) (*provider.Provider, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	return provider.OpenDiagnostic(ctx, cfg)
}

// openAdmin opens the token for KEK administration; with so, the SO PIN
// source is needed too (each PIN is read only when first used).
func (c *cli) openAdmin(ctx context.Context, so bool) (*provider.Admin, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	var soSrc provider.PINSource
	if so {
		if soSrc, err = c.soPIN(); err != nil {
			return nil, err
		}
	}
	return provider.OpenAdmin(ctx, cfg, soSrc)
}
