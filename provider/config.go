package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/pkcs11uri"
)

// Config says which module and token to open, and how.
//
// The token is chosen by URI, TokenLabel, TokenSerial or Slot; with none of
// them, the module's only token is used. A URI's attributes fill the fields
// left empty; a field set both ways with different values is an error.
type Config struct {
	// Module is the path of the PKCS#11 library, for example
	// /usr/lib/softhsm/libsofthsm2.so. Empty: the URI's module-path or
	// module-name, else DefaultModule (p11-kit's proxy; never a vendor's
	// module or SoftHSM by itself).
	Module string
	// InitArgs, when not empty, is passed to the module's C_Initialize as
	// CK_C_INITIALIZE_ARGS.pReserved (PKCS#11 v2.40 base §5.4), for modules
	// configured there. NSS softoken needs it:
	// configdir='sql:/path/to/db' certPrefix='' keyPrefix='' secmod='secmod.db' flags=
	// A module is initialised once per process: opening it again with
	// other InitArgs fails with ErrConfig.
	InitArgs string
	// URI is an RFC 7512 PKCS#11 URI, for example
	// pkcs11:token=ci?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin
	// Every attribute it names must match, or no token is selected
	// (RFC 7512 §3.3): token, serial, model, manufacturer, slot-id,
	// slot-description and slot-manufacturer against the slots and tokens,
	// library-manufacturer, library-description and library-version against
	// C_GetInfo. module-path names the module; module-name names it as
	// p11-kit does (FindModule). pin-source (file: only) and pin-value give
	// the PIN. With no module named anywhere, DefaultModule is used.
	URI string
	// TokenLabel, TokenSerial and Slot select a token.
	TokenLabel  string
	TokenSerial string
	Slot        *uint
	// PIN is the user PIN. It is read once, in Open.
	PIN PINSource
	// MaxSessions bounds the sessions the provider opens (default 16).
	// Callers beyond it wait, honouring their context.
	MaxSessions int
	// ExportPolicy says whether session keys may leave the token wrapped
	// (default ExportTrusted: only under SO-trusted KEKs, checked at Open).
	ExportPolicy ExportPolicy
	// PolicyCheck says which new session keys have their policy attributes
	// read back (default CheckFirstKey; docs/performance.md says why).
	PolicyCheck PolicyCheck
	// ChunkSize is the size of the parts Encrypt and Decrypt hand the token
	// (default DefaultChunkSize; 4 KiB to 16 MiB). Larger parts mean fewer
	// round trips to a networked HSM.
	ChunkSize int
	// MaxSealsPerKey bounds the encryptions of one session key
	// (default 2^32, NIST SP 800-38D §8.3 for random 96-bit nonces).
	MaxSealsPerKey uint64
	// Logger, when set, is told what the provider does that an operator
	// wants to know: the token opened and closed (Info), logins restored and
	// keys lost (Warn), waits for a session and calls tried again (Debug).
	// No PIN, key value, wrapped key or data is ever logged.
	Logger *slog.Logger
	// Metrics, when set, counts pool waits, retries, lost keys and
	// restored logins (see Metrics).
	Metrics *Metrics

	// match holds the URI's attributes that have no field above; set by
	// resolve.
	match tokenMatch

	// diagnostic: opened by OpenDiagnostic (no requirement enforced).
	diagnostic bool
	// DataKeyCache, when not nil, lets Encrypt reuse a session key for
	// several messages to the same KEKs and context, and Decrypt keep the
	// keys it unwrapped, within its limits (cache.go; docs/security.md says
	// what this trades away). Nil (the default): a new key per message.
	DataKeyCache *DataKeyCache
}

// PolicyCheck says how often Generate reads back a new key's attributes.
type PolicyCheck int

const (
	// CheckFirstKey (the default) reads back the first key of each kind
	// this provider generates, and the first it unwraps under each KEK,
	// and, if the token applied every attribute, trusts it with the same
	// template afterwards. Open has already shown that the token enforces
	// what the export policy rests on (trusted-only wrapping, wrap and
	// unwrap templates); the read-back of every key would cost a round trip
	// per key (a third of Generate on SoftHSM).
	CheckFirstKey PolicyCheck = iota
	// CheckEveryKey reads back the policy attributes of every key Generate
	// makes or Unwrap brings in, and destroys a key the token did not make
	// as asked: one C_GetAttributeValue more per key, against a token that
	// applies a template inconsistently.
	CheckEveryKey
)

// DefaultMaxSessions is the pool size when Config.MaxSessions is zero.
const DefaultMaxSessions = 16

// DefaultMaxSealsPerKey is the encryption limit when Config.MaxSealsPerKey is
// zero.
const DefaultMaxSealsPerKey = 1 << 32

// redacted is the configuration as it may be shown: the URI without its
// pin-value, the PIN source by kind only (a file's or variable's name, never
// a value).
type redacted struct {
	Module         string `json:"module,omitempty"`
	URI            string `json:"uri,omitempty"`
	TokenLabel     string `json:"token,omitempty"`
	TokenSerial    string `json:"serial,omitempty"`
	Slot           *uint  `json:"slot,omitempty"`
	PIN            string `json:"pin,omitempty"`
	MaxSessions    int    `json:"max_sessions,omitempty"`
	ExportPolicy   string `json:"export_policy,omitempty"`
	PolicyCheck    int    `json:"policy_check,omitempty"`
	ChunkSize      int    `json:"chunk_size,omitempty"`
	MaxSealsPerKey uint64 `json:"max_seals_per_key,omitempty"`
}

func (c Config) redact() redacted {
	r := redacted{Module: c.Module, TokenLabel: c.TokenLabel, TokenSerial: c.TokenSerial, Slot: c.Slot,
		MaxSessions: c.MaxSessions, ExportPolicy: c.ExportPolicy.String(), PolicyCheck: int(c.PolicyCheck),
		ChunkSize: c.ChunkSize, MaxSealsPerKey: c.MaxSealsPerKey}
	if c.URI != "" {
		if u, err := pkcs11uri.Parse(c.URI); err == nil {
			r.URI = u.String() // never encodes pin-value
			if u.PINValue != nil {
				clear(u.PINValue)
				r.PIN = "pin(value in uri, redacted)"
			}
		} else {
			r.URI = "(malformed)"
		}
	}
	if c.PIN != nil {
		r.PIN = fmt.Sprint(c.PIN)
	}
	return r
}

// String describes the configuration without any PIN.
func (c Config) String() string {
	r := c.redact()
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("module", r.Module)
	add("uri", r.URI)
	add("token", r.TokenLabel)
	add("serial", r.TokenSerial)
	if r.Slot != nil {
		add("slot", fmt.Sprint(*r.Slot))
	}
	add("pin", r.PIN)
	return "provider.Config{" + strings.Join(parts, " ") + "}"
}

// GoString keeps %#v as safe as %v.
func (c Config) GoString() string { return c.String() }

// MarshalJSON encodes the configuration without any PIN: a URI's
// pin-value is left out, a PIN source is named by kind.
func (c Config) MarshalJSON() ([]byte, error) { return json.Marshal(c.redact()) }

// LogValue gives log/slog the configuration without any PIN, whatever the
// handler.
func (c Config) LogValue() slog.Value {
	r := c.redact()
	attrs := []slog.Attr{}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	add("module", r.Module)
	add("uri", r.URI)
	add("token", r.TokenLabel)
	add("serial", r.TokenSerial)
	if r.Slot != nil {
		attrs = append(attrs, slog.Uint64("slot", uint64(*r.Slot)))
	}
	add("pin", r.PIN)
	return slog.GroupValue(attrs...)
}

// resolve merges the URI into the explicit fields, picks the module
// (Module, the URI's module-path, its module-name, then DefaultModule) and
// holds the PIN source to MaxPINLen.
func (c Config) resolve() (Config, error) {
	c, err := c.resolveURI()
	if err != nil {
		return c, err
	}
	if c.PIN != nil {
		c.PIN = cappedPIN{c.PIN}
	}
	if c.Module == "" {
		c.Module, err = DefaultModule()
	}
	return c, err
}

// cappedPIN holds any PIN source, the caller's own included, to the
// checks of checkPIN before the PIN reaches C_Login.
type cappedPIN struct{ src PINSource }

func (p cappedPIN) ReadPIN(ctx context.Context, t TokenInfo) ([]byte, error) {
	pin, err := p.src.ReadPIN(ctx, t)
	if err != nil {
		return nil, err
	}
	return checkPIN(pin, "the pin")
}
func (p cappedPIN) String() string { return fmt.Sprint(p.src) }

func (c Config) resolveURI() (Config, error) {
	if c.URI == "" {
		return c, nil
	}
	u, err := pkcs11uri.Parse(c.URI)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.match = tokenMatch{
		model: u.Model, manufacturer: u.Manufacturer,
		slotDescription: u.SlotDescription, slotManufacturer: u.SlotManufacturer,
		libManufacturer: u.LibraryManufacturer, libDescription: u.LibraryDescription, libVersion: u.LibraryVersion,
	}
	if u.ModuleName != "" {
		path, err := FindModule(u.ModuleName)
		if err != nil {
			return c, err
		}
		if u.ModulePath != "" && !sameFile(u.ModulePath, path) {
			return c, fmt.Errorf("%w: uri module-name %q is %s, not its module-path %s", ErrConfig, u.ModuleName, path, u.ModulePath)
		}
		if c.Module != "" && !sameFile(c.Module, path) {
			return c, fmt.Errorf("%w: uri module-name %q is %s, not the configured module %s", ErrConfig, u.ModuleName, path, c.Module)
		}
		if u.ModulePath == "" && c.Module == "" {
			c.Module = path
		}
	}
	merge := func(name string, field *string, v string) error {
		if v == "" {
			return nil
		}
		if *field != "" && *field != v {
			return fmt.Errorf("%w: uri %s %q differs from the configured %q", ErrConfig, name, v, *field)
		}
		*field = v
		return nil
	}
	if err := errors.Join(
		merge("module-path", &c.Module, u.ModulePath),
		merge("token", &c.TokenLabel, u.Token),
		merge("serial", &c.TokenSerial, u.Serial),
	); err != nil {
		return c, err
	}
	if u.SlotID != nil {
		if c.Slot != nil && *c.Slot != *u.SlotID {
			return c, fmt.Errorf("%w: uri slot-id %d differs from the configured slot %d", ErrConfig, *u.SlotID, *c.Slot)
		}
		s := *u.SlotID
		c.Slot = &s
	}
	var uriPIN PINSource
	switch {
	case len(u.PINValue) > 0 && u.PINSource != "":
		return c, fmt.Errorf("%w: uri has both pin-value and pin-source", ErrConfig)
	case len(u.PINValue) > 0:
		uriPIN = PINValue(u.PINValue)
		clear(u.PINValue)
	case strings.HasPrefix(u.PINSource, "file:"):
		path, err := fileURIPath(u.PINSource)
		if err != nil {
			return c, fmt.Errorf("%w: uri pin-source: %w", ErrConfig, err)
		}
		uriPIN = PINFile(path)
	case u.PINSource != "":
		return c, fmt.Errorf("%w: uri pin-source: only file: sources are supported", ErrConfig)
	}
	if uriPIN != nil {
		if c.PIN != nil {
			return c, fmt.Errorf("%w: pin given both in the uri and in the config", ErrConfig)
		}
		c.PIN = uriPIN
	}
	return c, nil
}

// fileURIPath is the path of a file URI (RFC 8089 §2): file:/p,
// file:///p, or file://localhost/p. Another host is refused, not read as a
// relative path, and so is a relative path (file:p).
func fileURIPath(src string) (string, error) {
	rest := strings.TrimPrefix(src, "file:")
	if auth, ok := strings.CutPrefix(rest, "//"); ok {
		host, path, _ := strings.Cut(auth, "/")
		if host != "" && !strings.EqualFold(host, "localhost") {
			return "", fmt.Errorf("%s names the host %q; only a local file (file:/path, file:///path) can hold the pin", src, host)
		}
		rest = "/" + path
	}
	switch {
	case rest == "" || rest == "/":
		return "", fmt.Errorf("%s names no file", src)
	case !strings.HasPrefix(rest, "/"):
		return "", fmt.Errorf("%s is not an absolute path (want file:/path)", src)
	}
	return rest, nil
}

// checkPIN refuses an empty PIN or one longer than MaxPINLen, before it
// reaches C_Login (where it would cost a try).
func checkPIN(pin []byte, what string) ([]byte, error) {
	switch {
	case len(pin) == 0:
		return nil, fmt.Errorf("%w: %s is empty", ErrPINSource, what)
	case len(pin) > MaxPINLen:
		clear(pin)
		return nil, fmt.Errorf("%w: %w: %s is longer than %d bytes", ErrPINSource, ErrSecretTooLong, what, MaxPINLen)
	}
	return pin, nil
}

// PINSource supplies a PIN. Implementations must never put the PIN in an
// error or a String; the caller clears the returned slice after use.
type PINSource interface {
	ReadPIN(ctx context.Context, token TokenInfo) ([]byte, error)
}

// ErrPINSource: a PIN source could not give a PIN (a missing or empty
// file, an unset variable, a failed prompt). The PIN was not tried.
var ErrPINSource = errors.New("cannot read pin")

type pinValue struct{ b []byte }

// PINValue is a PIN held in memory (a copy of pin is kept).
func PINValue(pin []byte) PINSource { return &pinValue{b: bytes.Clone(pin)} }

func (p *pinValue) ReadPIN(context.Context, TokenInfo) ([]byte, error) {
	return checkPIN(bytes.Clone(p.b), "pin")
}
func (p *pinValue) String() string             { return "pin(value, redacted)" }
func (p *pinValue) GoString() string           { return p.String() }
func (p *pinValue) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(p.String())) }

type pinFile string

// PINFile reads the PIN from a file: its first line, without the line end.
// An unreadable or empty file, or one whose first line is blank, is an
// error, never an empty PIN. The file must be a regular file or a pipe,
// not accessible to group or others, and owned by the effective user or
// root (a link is judged by the file it points to); it is read up to
// 4 KiB, and a PIN longer than MaxPINLen is ErrSecretTooLong. Reading a
// pipe ends when the context does.
func PINFile(path string) PINSource { return pinFile(path) }

func (p pinFile) ReadPIN(ctx context.Context, _ TokenInfo) ([]byte, error) {
	f, st, err := openSecretFile(string(p), true)
	if err != nil {
		return nil, fmt.Errorf("%w: pin file %s: %w", ErrPINSource, string(p), err)
	}
	defer f.Close()
	b, err := readSecret(ctx, f, true)
	if err != nil {
		return nil, fmt.Errorf("%w: pin file %s: %w", ErrPINSource, string(p), err)
	}
	pin := firstLine(b)
	clear(b[len(pin):])
	if len(pin) == 0 {
		switch {
		case len(b) > 0:
			return nil, fmt.Errorf("%w: pin file %s: the first line is blank (the pin must be on the first line)", ErrPINSource, string(p))
		case !st.Mode().IsRegular():
			return nil, fmt.Errorf("%w: pin file %s is a pipe that gave nothing (no writer, or it closed)", ErrPINSource, string(p))
		}
		return nil, fmt.Errorf("%w: pin file %s is empty", ErrPINSource, string(p))
	}
	return checkPIN(pin, "the pin in pin file "+string(p))
}
func (p pinFile) String() string { return "pin(file " + string(p) + ")" }

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return bytes.TrimSuffix(b, []byte{'\r'})
}

type pinEnv string

// PINEnv reads the PIN from an environment variable. An unset or empty
// variable is an error.
func PINEnv(name string) PINSource { return pinEnv(name) }

func (p pinEnv) ReadPIN(context.Context, TokenInfo) ([]byte, error) {
	v, ok := os.LookupEnv(string(p))
	if !ok || v == "" {
		return nil, fmt.Errorf("%w: environment variable %s is not set", ErrPINSource, string(p))
	}
	return checkPIN([]byte(v), "environment variable "+string(p))
}
func (p pinEnv) String() string { return "pin(env " + string(p) + ")" }

// PINPrompt asks a function for the PIN, for example one that prompts on a
// terminal without echo. It is called once per Open.
type PINPrompt func(ctx context.Context, token TokenInfo) ([]byte, error)

func (f PINPrompt) ReadPIN(ctx context.Context, t TokenInfo) ([]byte, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: nil prompt", ErrPINSource)
	}
	pin, err := f(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPINSource, err)
	}
	return checkPIN(pin, "the pin typed")
}
func (f PINPrompt) String() string { return "pin(prompt)" }
