package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
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
	// /usr/lib/softhsm/libsofthsm2.so.
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
	// Its token, serial, slot-id, module-path, pin-source and pin-value
	// attributes are used.
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

// String describes the configuration without any PIN.
func (c Config) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("module", c.Module)
	if c.URI != "" {
		if u, err := pkcs11uri.Parse(c.URI); err == nil {
			add("uri", u.String())
		} else {
			add("uri", "(malformed)")
		}
	}
	add("token", c.TokenLabel)
	add("serial", c.TokenSerial)
	if c.Slot != nil {
		add("slot", fmt.Sprint(*c.Slot))
	}
	if c.PIN != nil {
		add("pin", fmt.Sprint(c.PIN))
	}
	return "provider.Config{" + strings.Join(parts, " ") + "}"
}

// GoString keeps %#v as safe as %v.
func (c Config) GoString() string { return c.String() }

// resolve merges the URI into the explicit fields.
func (c Config) resolve() (Config, error) {
	if c.URI == "" {
		return c, nil
	}
	u, err := pkcs11uri.Parse(c.URI)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrConfig, err)
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
		path := strings.TrimPrefix(u.PINSource, "file:")
		path = strings.TrimPrefix(path, "//") // file:///p and file:/p
		if path == "" {
			return c, fmt.Errorf("%w: uri pin-source names no file", ErrConfig)
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
	if len(p.b) == 0 {
		return nil, fmt.Errorf("%w: empty pin", ErrPINSource)
	}
	return bytes.Clone(p.b), nil
}
func (p *pinValue) String() string             { return "pin(value, redacted)" }
func (p *pinValue) GoString() string           { return p.String() }
func (p *pinValue) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(p.String())) }

type pinFile string

// PINFile reads the PIN from a file: its first line, without the line end.
// An unreadable or empty file is an error, never an empty PIN.
func PINFile(path string) PINSource { return pinFile(path) }

func (p pinFile) ReadPIN(context.Context, TokenInfo) ([]byte, error) {
	b, err := os.ReadFile(string(p))
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in our message already
		}
		return nil, fmt.Errorf("%w: pin file %s: %w", ErrPINSource, string(p), err)
	}
	pin := firstLine(b)
	clear(b[len(pin):])
	if len(pin) == 0 {
		clear(b)
		return nil, fmt.Errorf("%w: pin file %s is empty", ErrPINSource, string(p))
	}
	return pin, nil
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
	return []byte(v), nil
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
	if len(pin) == 0 {
		return nil, fmt.Errorf("%w: empty pin", ErrPINSource)
	}
	return pin, nil
}
func (f PINPrompt) String() string { return "pin(prompt)" }
