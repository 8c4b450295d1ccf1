package provider

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// Algorithm is a session key algorithm.
type Algorithm int

const (
	AES128 Algorithm = iota + 1 // AES with a 128-bit key
	AES256                      // AES with a 256-bit key
)

func (a Algorithm) String() string {
	switch a {
	case AES128:
		return "aes128"
	case AES256:
		return "aes256"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// ParseAlgorithm reads "aes128" or "aes256".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "aes128":
		return AES128, nil
	case "aes256":
		return AES256, nil
	}
	return 0, fmt.Errorf("%w: algorithm %q (want aes128 or aes256)", ErrInvalidInput, s)
}

func (a Algorithm) bytes() int {
	switch a {
	case AES128:
		return 16
	case AES256:
		return 32
	}
	return 0
}

// MaxSealSize bounds one Seal or Open. Larger data belongs in a stream.
const MaxSealSize = 64 << 20

// Key is a session key: an AES key that exists only inside the token, as a
// session object of one of the provider's sessions. Its value can never be
// read. It lives until Destroy, Provider.Close, the end of the process, or
// the token dropping its session (then ErrKeyLost). Key is safe for
// concurrent use.
type Key struct {
	p        *Provider
	obj      p11.Object
	owner    *p11.Session
	alg      Algorithm
	created  time.Time
	id       [16]byte      // random; names the key in its exported manifests
	manifest *cms.Manifest // what an imported key's blob said of it (InspectKey)
	// exportable: generated under ExportTrusted, or unwrapped (the KEK's
	// unwrap template makes it CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED).
	exportable bool

	// mu is held for reading by operations and for writing by destroy.
	mu        sync.RWMutex
	destroyed bool // Destroy or Close was called: no more use
	gone      bool // the token object is destroyed (or was lost)
	lost      atomic.Bool
	seals     atomic.Uint64
	// detach, when set, ends a token operation that holds a session for
	// this key between calls (NewEncrypter); destroy calls it first.
	detach    func()
	generated bool                   // made by Generate (its CKA_CHECK_VALUE is the token's)
	kcv       atomic.Pointer[[]byte] // key check value, once computed
}

// Generate makes a new session key on the token.
func (p *Provider) Generate(ctx context.Context, alg Algorithm) (*Key, error) {
	return p.generate(ctx, alg, p.cfg.ExportPolicy == ExportTrusted)
}

// generate makes a session key, exportable (under trusted KEKs) or not.
func (p *Provider) generate(ctx context.Context, alg Algorithm, exportable bool) (*Key, error) {
	n := alg.bytes()
	if n == 0 {
		return nil, fmt.Errorf("%w: algorithm %v", ErrInvalidInput, alg)
	}
	if err := p.begin(); err != nil {
		return nil, err
	}
	defer p.end()
	k := &Key{p: p, alg: alg, exportable: exportable, generated: true}
	spec := p11.SecretKeySpec{Bytes: n, Extractable: exportable, WrapWithTrusted: exportable}
	verify := p.mustCheck(spec)
	err := p.do(ctx, func(s *p11.Session) error {
		obj, err := p.pool.GenerateAESChecked(s, spec, verify)
		if err != nil {
			return err
		}
		k.obj, k.owner = obj, s
		return nil
	})
	if err == nil && verify {
		p.checked.Store(spec, true)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %v: %w", alg, mapErr(err))
	}
	p.register(k)
	return k, nil
}

// register records a new key, so that Close destroys it.
func (p *Provider) register(k *Key) {
	k.created = time.Now().UTC().Truncate(time.Second)
	_, _ = rand.Read(k.id[:])
	p.keysMu.Lock()
	p.keys[k] = struct{}{}
	p.keysMu.Unlock()
}

// Algorithm is the key's algorithm.
func (k *Key) Algorithm() Algorithm { return k.alg }

// Exportable reports whether the key may leave the token wrapped under a
// trusted KEK.
func (k *Key) Exportable() bool { return k.exportable }

// ID is a random identifier of the key, kept in its exported manifest, so
// that an imported key has the ID it was exported with.
func (k *Key) ID() [16]byte { return k.id }

// Created is when the key was generated or unwrapped.
func (k *Key) Created() time.Time { return k.created }

// String names the key without any secret.
func (k *Key) String() string {
	return fmt.Sprintf("%v session key (object %d)", k.alg, k.obj)
}

// use runs fn with the key's object on a pooled session, translating a gone
// session or object into ErrKeyLost.
func (k *Key) use(ctx context.Context, op string, fn func(s *p11.Session) error) error {
	return k.guard(op, func() error {
		return k.p.do(ctx, func(s *p11.Session) error {
			if k.owner.Dead() {
				return ErrKeyLost
			}
			return fn(s)
		})
	})
}

// usePair is use with two sessions at once, for work that keeps two token
// operations active (see Provider.Decrypt).
func (k *Key) usePair(ctx context.Context, op string, fn func(a, b *p11.Session) error) error {
	return k.guard(op, func() error {
		a, b, err := k.p.pool.GetPair(ctx)
		if err != nil {
			return err
		}
		defer k.p.pool.PutPair(a, b)
		if k.owner.Dead() {
			return ErrKeyLost
		}
		err = fn(a, b)
		if err != nil {
			k.p.pool.CheckAny(err)
		}
		return err
	})
}

// guard runs fn while the key may be used: the provider open, the key
// neither destroyed nor lost. Errors that mean the key's session is gone
// become ErrKeyLost.
func (k *Key) guard(op string, fn func() error) error {
	if k == nil {
		return fmt.Errorf("%s: %w: nil key", op, ErrInvalidInput)
	}
	if err := k.p.begin(); err != nil {
		if errors.Is(err, ErrClosed) {
			return fmt.Errorf("%s: %w: %w", op, ErrKeyDestroyed, ErrClosed)
		}
		return err
	}
	defer k.p.end()
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.destroyed {
		return fmt.Errorf("%s: %w", op, ErrKeyDestroyed)
	}
	if k.lost.Load() || k.owner.Dead() {
		k.markLost()
		return fmt.Errorf("%s: %w", op, ErrKeyLost)
	}
	err := fn()
	if err == nil {
		return nil
	}
	code, _ := p11.CodeOf(err)
	if errors.Is(err, ErrKeyLost) || k.owner.Dead() ||
		code == pkcs11.CKR_OBJECT_HANDLE_INVALID || code == pkcs11.CKR_KEY_HANDLE_INVALID {
		k.markLost()
		if errors.Is(err, ErrKeyLost) {
			return fmt.Errorf("%s: %w", op, ErrKeyLost)
		}
		return fmt.Errorf("%s: %w: %w", op, ErrKeyLost, withTokenError(err))
	}
	return fmt.Errorf("%s: %w", op, mapErr(err))
}

// markLost forgets a key whose session is gone: there is nothing to destroy.
func (k *Key) markLost() {
	if k.lost.Swap(true) {
		return
	}
	k.p.obs.keyLost(k)
	k.p.keysMu.Lock()
	delete(k.p.keys, k)
	k.p.keysMu.Unlock()
}

// Seal encrypts and authenticates plaintext and additionalData with AES-GCM
// on the token. The result is nonce (12 bytes) || ciphertext || tag (16
// bytes); the nonce comes from crypto/rand. Neither input is modified.
func (k *Key) Seal(ctx context.Context, plaintext, additionalData []byte) ([]byte, error) {
	if len(plaintext) > MaxSealSize {
		return nil, fmt.Errorf("seal: %w: %d bytes is more than %d", ErrInvalidInput, len(plaintext), MaxSealSize)
	}
	var out []byte
	err := k.use(ctx, "seal", func(s *p11.Session) error {
		if k.seals.Add(1) > k.p.cfg.MaxSealsPerKey {
			return ErrKeyExhausted
		}
		var nonce [p11.NonceSize]byte
		if _, err := rand.Read(nonce[:]); err != nil {
			return err
		}
		ct, err := k.p.pool.SealGCM(s, k.obj, nonce[:], additionalData, plaintext)
		if err != nil {
			return err
		}
		if len(ct) != len(plaintext)+p11.TagSize {
			return fmt.Errorf("token returned %d bytes of ciphertext for %d of plaintext", len(ct), len(plaintext))
		}
		out = make([]byte, 0, p11.NonceSize+len(ct))
		out = append(append(out, nonce[:]...), ct...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Open authenticates and decrypts what Seal made with this key and the same
// additionalData. Any change to either gives ErrAuthentication and no
// plaintext. (The package function Open is another thing: it opens a
// token.)
func (k *Key) Open(ctx context.Context, sealed, additionalData []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("open: %w: %d bytes is shorter than nonce and tag", ErrAuthentication, len(sealed))
	}
	if len(sealed) > MaxSealSize+Overhead {
		return nil, fmt.Errorf("open: %w: %d bytes is more than %d", ErrInvalidInput, len(sealed), MaxSealSize+Overhead)
	}
	var out []byte
	err := k.use(ctx, "open", func(s *p11.Session) error {
		pt, err := k.p.pool.OpenGCM(s, k.obj, sealed[:p11.NonceSize], additionalData, sealed[p11.NonceSize:])
		if err != nil {
			// SoftHSM reports a failed tag check as CKR_GENERAL_ERROR; the
			// standard answer is CKR_ENCRYPTED_DATA_INVALID (PKCS#11 v2.40
			// mechanisms §2.12.3). In this context both mean "not authentic".
			if isAuthFailure(err) {
				return fmt.Errorf("%w: %w", ErrAuthentication, err)
			}
			return err
		}
		out = pt
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Destroy destroys the key on the token. It is idempotent; afterwards every
// use returns ErrKeyDestroyed. Destroying a lost key succeeds: it is gone.
//
// The token object is destroyed whatever ctx says (a request's context that
// ended is the usual case of a deferred Destroy): a ctx that is done only
// stops a wait for a session when all are busy. If no session is free then,
// or the token fails, Destroy returns the error and the key stays with the
// provider, unusable: a later Destroy or Close destroys it.
func (k *Key) Destroy(ctx context.Context) error {
	if k == nil {
		return fmt.Errorf("destroy: %w: nil key", ErrInvalidInput)
	}
	if err := k.p.begin(); err != nil {
		return nil // Close destroyed it
	}
	defer k.p.end()
	return k.destroy(ctx)
}

func (k *Key) destroy(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.destroyLocked(ctx)
}

// destroyLocked is destroy; the caller holds k.mu for writing.
func (k *Key) destroyLocked(ctx context.Context) error {
	k.destroyed = true // from now on every use is refused
	if k.detach != nil {
		k.detach() // a writer's operation ends and its session returns first
	}
	if k.gone {
		return nil
	}
	if k.lost.Load() || k.owner.Dead() {
		k.forget()
		return nil
	}
	err := k.p.doDetached(ctx, func(s *p11.Session) error {
		if k.owner.Dead() {
			return nil
		}
		return k.p.pool.Destroy(s, k.obj)
	})
	if code, _ := p11.CodeOf(err); err == nil || code == pkcs11.CKR_OBJECT_HANDLE_INVALID || k.owner.Dead() {
		k.forget() // destroyed, or gone with its session
		return nil
	}
	if errors.Is(err, p11.ErrPoolBusy) {
		return fmt.Errorf("destroy: %w: %w; Close or another Destroy destroys the key", context.Cause(ctx), err)
	}
	return fmt.Errorf("destroy: %w", mapErr(err))
}

// forget records that the key's token object is gone and drops the key
// from the provider. The caller holds k.mu.
func (k *Key) forget() {
	k.gone = true
	k.p.keysMu.Lock()
	delete(k.p.keys, k)
	k.p.keysMu.Unlock()
}
