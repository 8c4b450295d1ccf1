// Package kmswrap is a go-kms-wrapping v2 Wrapper backed by hsmkeys, for
// hosts that take a wrapping.Wrapper (Vault and OpenBao seals, Boundary's
// KMS, config encryption). Every Encrypt makes one envelope: a fresh
// AES-256 session key generated on the PKCS#11 token, the plaintext sealed
// under it by the token (AES-GCM), the key wrapped under a KEK that never
// leaves the token. Every Decrypt unwraps the key into the token, opens the
// ciphertext there and destroys the key.
//
// # Configuration
//
// SetConfig takes wrapping.WithConfigMap with the keys
//
//	kek       the KEK's name (CKA_LABEL); required
//	module    PKCS#11 library (default: HSMKEYS_MODULE, then SoftHSM)
//	token     token label (default: HSMKEYS_TOKEN)
//	uri       RFC 7512 PKCS#11 URI instead of module and token (default: HSMKEYS_URI)
//	pin_file  file holding the user PIN (default: HSMKEYS_PIN, then HSMKEYS_PIN_FILE)
//
// Other keys are left to the host. A PIN in the map (pin, pin_value,
// pin-value) is refused: config maps end up in files and logs.
// wrapping.WithDisallowEnvVars(true) reads no HSMKEYS_* variable.
//
// # Blobs
//
// BlobInfo.Ciphertext is the whole envelope, the CMS message hsmkeys
// encrypt writes (docs/format.md, Adapters): it names its KEK version and
// carries the wrapped key, so Decrypt needs nothing else. KeyInfo.KeyId is
// the hex CKA_ID of the KEK version that sealed it (KeyId's value at the
// time) and KeyInfo.Mechanism is MechanismCMS. Iv and WrappedKey stay empty.
//
// # Associated data
//
// wrapping.WithAad is bound as the CMS encryption context {"aad":
// base64(aad)}: Decrypt must be given the same bytes, and hsmkeys decrypt
// opens such a blob's ciphertext with --context aad=BASE64.
//
// # Rotation
//
// KeyId looks the KEK up on the token again and reports its newest
// version. After a new version is made (hsmkeys kek create with the same
// label), KeyId changes and Encrypt seals for the new version, so a host
// that compares a blob's KeyInfo.KeyId with KeyId (as Vault's seal rewrap
// does) rewraps; blobs of older versions decrypt as long as those versions
// are on the token.
//
// A Wrapper is safe for concurrent use. It logs in to the token once, at
// SetConfig, and holds its sessions until Finalize.
package kmswrap

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"

	wrapping "github.com/hashicorp/go-kms-wrapping/v2"
	"github.com/hsmkeys/hsmkeys/integrations/internal/envelope"
)

// WrapperType is what Type reports.
const WrapperType wrapping.WrapperType = "hsmkeys"

// MechanismCMS marks a blob whose Ciphertext is an hsmkeys CMS envelope.
const MechanismCMS uint64 = 1

// ErrNotConfigured: Encrypt, Decrypt or KeyId before SetConfig.
var ErrNotConfigured = errors.New("kmswrap: wrapper not configured (call SetConfig)")

var (
	_ wrapping.Wrapper       = (*Wrapper)(nil)
	_ wrapping.InitFinalizer = (*Wrapper)(nil)
)

// Wrapper is the hsmkeys wrapping.Wrapper.
type Wrapper struct {
	mu sync.RWMutex
	e  *envelope.Envelope
}

// NewWrapper returns an unconfigured Wrapper: call SetConfig.
func NewWrapper() *Wrapper { return &Wrapper{} }

// Type is WrapperType.
func (w *Wrapper) Type(context.Context) (wrapping.WrapperType, error) { return WrapperType, nil }

// SetConfig opens the token and finds the KEK (see the package doc). A
// Wrapper configured before closes its token first. The metadata returned
// names the KEK, its version and the token; never a PIN.
func (w *Wrapper) SetConfig(ctx context.Context, opt ...wrapping.Option) (*wrapping.WrapperConfig, error) {
	opts, err := wrapping.GetOpts(opt...)
	if err != nil {
		return nil, err
	}
	s, err := envelope.FromMap(opts.WithConfigMap)
	if err != nil {
		return nil, fmt.Errorf("kmswrap: %w", err)
	}
	if s.KEK == "" {
		return nil, fmt.Errorf("kmswrap: %w: config key kek is required", wrapping.ErrInvalidParameter)
	}
	getenv := os.Getenv
	if opts.WithDisallowEnvVars {
		getenv = nil
	}
	e, err := envelope.Open(ctx, s, getenv)
	if err != nil {
		return nil, fmt.Errorf("kmswrap: %w", err)
	}
	w.mu.Lock()
	old := w.e
	w.e = e
	w.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	kek := e.KEK()
	tok := e.Provider().Token()
	return &wrapping.WrapperConfig{Metadata: map[string]string{
		"kek":         kek.Label,
		"kek_version": fmt.Sprint(kek.Version),
		"key_id":      hex.EncodeToString(kek.ID),
		"token":       tok.Label,
		"serial":      tok.Serial,
	}}, nil
}

func (w *Wrapper) envelope() (*envelope.Envelope, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.e == nil {
		return nil, ErrNotConfigured
	}
	return w.e, nil
}

// KeyId finds the newest version of the KEK on the token and returns its
// CKA_ID in hex. New blobs are sealed for that version from now on.
func (w *Wrapper) KeyId(ctx context.Context) (string, error) {
	e, err := w.envelope()
	if err != nil {
		return "", err
	}
	kek, err := e.Refresh(ctx)
	if err != nil {
		return "", fmt.Errorf("kmswrap: %w", err)
	}
	return hex.EncodeToString(kek.ID), nil
}

// Encrypt seals plaintext in one envelope, bound to WithAad.
func (w *Wrapper) Encrypt(ctx context.Context, plaintext []byte, opt ...wrapping.Option) (*wrapping.BlobInfo, error) {
	opts, err := wrapping.GetOpts(opt...)
	if err != nil {
		return nil, err
	}
	e, err := w.envelope()
	if err != nil {
		return nil, err
	}
	env, kek, err := e.SealKEK(ctx, plaintext, opts.WithAad)
	if err != nil {
		return nil, fmt.Errorf("kmswrap: %w", err)
	}
	return &wrapping.BlobInfo{
		Ciphertext: env,
		KeyInfo:    &wrapping.KeyInfo{Mechanism: MechanismCMS, KeyId: hex.EncodeToString(kek.ID)},
	}, nil
}

// Decrypt opens a blob that Encrypt made with this KEK (any version on the
// token), with the same WithAad.
func (w *Wrapper) Decrypt(ctx context.Context, in *wrapping.BlobInfo, opt ...wrapping.Option) ([]byte, error) {
	if in == nil || len(in.Ciphertext) == 0 {
		return nil, fmt.Errorf("kmswrap: %w: no ciphertext", wrapping.ErrInvalidParameter)
	}
	if in.KeyInfo != nil && in.KeyInfo.Mechanism != MechanismCMS && in.KeyInfo.Mechanism != 0 {
		return nil, fmt.Errorf("kmswrap: %w: mechanism %d is not an hsmkeys envelope", wrapping.ErrInvalidParameter, in.KeyInfo.Mechanism)
	}
	opts, err := wrapping.GetOpts(opt...)
	if err != nil {
		return nil, err
	}
	e, err := w.envelope()
	if err != nil {
		return nil, err
	}
	pt, err := e.Open(ctx, in.Ciphertext, opts.WithAad)
	if err != nil {
		return nil, fmt.Errorf("kmswrap: %w", err)
	}
	return pt, nil
}

// Init does nothing: SetConfig opens the token.
func (w *Wrapper) Init(context.Context, ...wrapping.Option) error { return nil }

// Finalize closes the token: every session key is destroyed and the
// sessions closed. The Wrapper needs SetConfig again before use.
func (w *Wrapper) Finalize(context.Context, ...wrapping.Option) error {
	w.mu.Lock()
	e := w.e
	w.e = nil
	w.mu.Unlock()
	if e == nil {
		return nil
	}
	return e.Close()
}
