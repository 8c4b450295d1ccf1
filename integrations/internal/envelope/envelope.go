// Package envelope is what the hsmkeys adapters (gocloud, kmswrap, tink)
// share: the token and KEK named by a URL, a config map or the HSMKEYS_*
// environment, and one envelope per message.
//
// An envelope is exactly the message Provider.Encrypt writes: a DER CMS
// AuthEnvelopedData whose content-encryption key is a fresh AES-256 session
// key made on the token for this message, wrapped under the KEK by the
// token, used once for AES-GCM on the token and destroyed. Associated data
// (Tink's, go-kms-wrapping's WithAad) goes into the CMS encryption context
// as the single entry "aad" whose value is the standard base64 (RFC 4648
// §4, padded) of the bytes; no associated data, no context. So hsmkeys
// decrypt opens every envelope (with --context aad=BASE64 where there is
// associated data), and openssl cms opens those without associated data.
// docs/format.md, section Adapters, is the reference.
package envelope

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/hsmkeys/hsmkeys/provider"
)

// AADKey is the encryption-context key that carries associated data.
const AADKey = "aad"

// Context is the encryption context that binds aad: nil for none.
func Context(aad []byte) map[string]string {
	if len(aad) == 0 {
		return nil
	}
	return map[string]string{AADKey: base64.StdEncoding.EncodeToString(aad)}
}

// Envelope seals and opens messages under the versions of one KEK. It is
// safe for concurrent use.
type Envelope struct {
	p     *provider.Provider
	owned bool // Close closes p
	name  string

	mu    sync.Mutex
	kek   *provider.KEK   // the newest version: new messages go to it
	known map[string]bool // recipient identifiers of the versions seen ("id:"/"ski:" + hex)
}

// Open opens the token of s (one login, held until Close) and finds the
// newest version of the KEK s names.
func Open(ctx context.Context, s Settings, getenv func(string) string) (*Envelope, error) {
	if s.KEK == "" {
		return nil, fmt.Errorf("%w: no kek named", provider.ErrConfig)
	}
	cfg, err := s.Config(getenv)
	if err != nil {
		return nil, err
	}
	p, err := provider.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	e, err := New(ctx, p, s.KEK)
	if err != nil {
		p.Close()
		return nil, err
	}
	e.owned = true
	return e, nil
}

// New uses an open provider, which stays the caller's: Close leaves it open.
func New(ctx context.Context, p *provider.Provider, kek string) (*Envelope, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil provider", provider.ErrInvalidInput)
	}
	e := &Envelope{p: p, name: kek}
	if _, err := e.Refresh(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// Provider is the provider the envelope uses.
func (e *Envelope) Provider() *provider.Provider { return e.p }

// Name is the KEK's name.
func (e *Envelope) Name() string { return e.name }

// KEK is the version new messages are sealed for.
func (e *Envelope) KEK() *provider.KEK {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.kek
}

// Refresh finds the newest version of the KEK on the token again (after a
// rotation) and returns it. It costs one search of the token for the KEK's
// label.
func (e *Envelope) Refresh(ctx context.Context) (*provider.KEK, error) {
	kek, err := e.p.KEK(ctx, e.name)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kek = kek
	e.learn(kek)
	return kek, nil
}

// learnAll records every version of the KEK on the token as a recipient
// this envelope opens. It costs a listing of the token's KEKs, made only
// when a message names a version not seen yet.
func (e *Envelope) learnAll(ctx context.Context) error {
	all, err := e.p.KEKs(ctx)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range all {
		if k.Label == e.name {
			e.learn(k)
		}
	}
	return nil
}

// learn records k's recipient identifiers; e.mu is held.
func (e *Envelope) learn(k *provider.KEK) {
	if e.known == nil {
		e.known = map[string]bool{}
	}
	e.known["id:"+hex.EncodeToString(k.ID)] = true
	if pub := k.PublicKey(); pub != nil {
		e.known["ski:"+hex.EncodeToString(subjectKeyID(pub))] = true
	}
}

// subjectKeyID is how a CMS KeyTransRecipientInfo names an RSA KEK: RFC
// 5280 §4.2.1.2 method 1, as hsmkeys writes it.
func subjectKeyID(pub *rsa.PublicKey) []byte {
	sum := sha1.Sum(x509.MarshalPKCS1PublicKey(pub))
	return sum[:]
}

// Seal makes one envelope of plaintext, bound to aad.
func (e *Envelope) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	env, _, err := e.SealKEK(ctx, plaintext, aad)
	return env, err
}

// SealKEK is Seal, and says which version of the KEK it sealed for.
func (e *Envelope) SealKEK(ctx context.Context, plaintext, aad []byte) ([]byte, *provider.KEK, error) {
	kek := e.KEK()
	var out bytes.Buffer
	out.Grow(len(plaintext) + 1024)
	err := e.p.Encrypt(ctx, &out, bytes.NewReader(plaintext), int64(len(plaintext)), []*provider.KEK{kek}, provider.Options{Context: Context(aad)})
	if errors.Is(err, provider.ErrNotFound) {
		// The version went away (destroyed after a rotation): the newest
		// one then, once.
		if kek, err = e.Refresh(ctx); err == nil {
			out.Reset()
			err = e.p.Encrypt(ctx, &out, bytes.NewReader(plaintext), int64(len(plaintext)), []*provider.KEK{kek}, provider.Options{Context: Context(aad)})
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return out.Bytes(), kek, nil
}

// Open opens an envelope made for a version of this KEK, bound to aad. An
// envelope for another KEK of the token is refused (ErrOtherKEK) before the
// token is asked, so that one key's users cannot use the envelope to open
// another key's messages.
func (e *Envelope) Open(ctx context.Context, envelope, aad []byte) ([]byte, error) {
	info, err := provider.Inspect(envelope)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	if info.Kind != "message" {
		return nil, fmt.Errorf("decrypt: %w: an exported key, not a message", provider.ErrUnsupported)
	}
	if !e.isFor(info) {
		// An older version, or one made since the last look?
		if err := e.learnAll(ctx); err != nil {
			return nil, err
		}
		if !e.isFor(info) {
			return nil, fmt.Errorf("decrypt: %w: the message is for none of the versions of kek %q", ErrOtherKEK, e.name)
		}
	}
	var out bytes.Buffer
	out.Grow(int(info.ContentLen))
	if err := e.p.Decrypt(ctx, &out, bytes.NewReader(envelope), int64(len(envelope)), provider.Options{Context: Context(aad)}); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// ErrOtherKEK: the envelope is not for this KEK. It matches
// provider.ErrNotFound too.
var ErrOtherKEK = fmt.Errorf("%w: kek not a recipient", provider.ErrNotFound)

func (e *Envelope) isFor(info *provider.Info) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range info.Recipients {
		switch r.Kind {
		case "kek":
			if e.known["id:"+hex.EncodeToString(r.KEKID)] {
				return true
			}
		case "ktri":
			if e.known["ski:"+hex.EncodeToString(r.SubjectKeyID)] {
				return true
			}
		}
	}
	return false
}

// Close closes the provider if Open opened it. It is idempotent.
func (e *Envelope) Close() error {
	if e.owned {
		return e.p.Close()
	}
	return nil
}
