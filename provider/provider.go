package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// TokenInfo describes a token present in a slot.
type TokenInfo struct {
	Slot         uint
	Label        string
	Serial       string
	Model        string
	Manufacturer string
	// Initialized is false for a slot whose token has not been initialised
	// (SoftHSM always offers one such slot). Open never selects it.
	Initialized bool
}

func (t TokenInfo) String() string {
	return fmt.Sprintf("%q (serial %s, slot %d)", t.Label, t.Serial, t.Slot)
}

// Provider is an open token with a pool of logged-in sessions. It is safe for
// concurrent use by many goroutines.
type Provider struct {
	mod   *p11.Module
	pool  *p11.Pool
	token TokenInfo
	cfg   Config

	// mu is held for reading by every operation in flight and for writing by
	// Close, so Close waits for them.
	mu     sync.RWMutex
	closed bool

	keysMu sync.Mutex
	keys   map[*Key]struct{}

	pin []byte // kept to restore a lost login once; cleared by Close

	checkedSpecs sync.Map // p11.SecretKeySpec -> true once read back (CheckFirstKey)

	keks   kekCache
	oaepMu sync.Mutex
	oaep   WrapMechanism // the OAEP variant the token accepted, once known

	// Enforcement is what the export-policy checks at Open found.
	enforcement []EnforcementCheck
}

// EnforcementCheck is one check Open made that the token enforces the export
// policy (see docs/security.md).
type EnforcementCheck struct {
	Name   string
	OK     bool
	Detail string
	// Unchecked: the check's premise failed (the token does not do the
	// call with any key, or the transport drops it), so it proved nothing
	// either way; OK is false. Open does not refuse the token for it.
	Unchecked bool
	// Warning: OK, but something the administrator chose or should know
	// (an AES KEK stored in clear at rest, a foreign object).
	Warning bool
}

// Enforcement returns the checks Open made of the export policy; empty under
// ExportNone.
func (p *Provider) Enforcement() []EnforcementCheck { return slices.Clone(p.enforcement) }

// Tokens lists the tokens present in the module at path.
func Tokens(path string) ([]TokenInfo, error) {
	mod, err := p11.Load(path)
	if err != nil {
		return nil, mapErr(err)
	}
	defer mod.Release()
	return tokens(mod)
}

func tokens(mod *p11.Module) ([]TokenInfo, error) {
	ts, err := mod.Tokens()
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]TokenInfo, len(ts))
	for i, t := range ts {
		out[i] = TokenInfo{Slot: t.Slot, Label: t.Label, Serial: t.Serial, Model: t.Model, Manufacturer: t.Manufacturer, Initialized: t.Initialized}
	}
	return out, nil
}

// Open loads the module, finds the token, reads the PIN once and logs in.
// A PIN the token refuses gives a *PINError and is not tried again.
func Open(ctx context.Context, cfg Config) (*Provider, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if cfg.Module == "" {
		return nil, fmt.Errorf("%w: no module path (set Config.Module or module-path in the uri)", ErrConfig)
	}
	if cfg.MaxSessions < 0 {
		return nil, fmt.Errorf("%w: MaxSessions %d", ErrConfig, cfg.MaxSessions)
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.ExportPolicy != ExportTrusted && cfg.ExportPolicy != ExportNone {
		return nil, fmt.Errorf("%w: export policy %v", ErrConfig, cfg.ExportPolicy)
	}
	if cfg.ChunkSize != 0 && (cfg.ChunkSize < 4<<10 || cfg.ChunkSize > 16<<20) {
		return nil, fmt.Errorf("%w: chunk size %d (want 4 KiB to 16 MiB)", ErrConfig, cfg.ChunkSize)
	}
	if cfg.PolicyCheck != CheckEveryKey && cfg.PolicyCheck != CheckFirstKey {
		return nil, fmt.Errorf("%w: policy check %d", ErrConfig, cfg.PolicyCheck)
	}
	if cfg.MaxSealsPerKey == 0 {
		cfg.MaxSealsPerKey = DefaultMaxSealsPerKey
	}
	mod, err := p11.Load(cfg.Module)
	if err != nil {
		return nil, mapErr(err)
	}
	p := &Provider{mod: mod, cfg: cfg, keys: map[*Key]struct{}{}}
	if err := p.open(ctx); err != nil {
		clear(p.pin)
		mod.Release()
		return nil, err
	}
	return p, nil
}

func (p *Provider) open(ctx context.Context) error {
	all, err := tokens(p.mod)
	if err != nil {
		return err
	}
	tok, err := selectToken(p.cfg, all)
	if err != nil {
		return err
	}
	p.token = tok
	if err := p.checkMechanisms(); err != nil {
		return err
	}
	if p.cfg.PIN == nil {
		return fmt.Errorf("%w: no pin source (session keys are private objects and need a login)", ErrConfig)
	}
	pin, err := p.cfg.PIN.ReadPIN(ctx, tok)
	if err != nil {
		return err
	}
	p.pin = pin
	pool, first, err := p11.NewPool(p.mod, tok.Slot, p.cfg.MaxSessions, func() ([]byte, error) {
		return bytes.Clone(p.pin), nil
	})
	if err != nil {
		return p.loginErr(err)
	}
	p.pool = pool
	defer pool.Put(first)
	if p.cfg.ExportPolicy == ExportTrusted {
		for _, r := range pool.CheckEnforcement(first) {
			p.enforcement = append(p.enforcement, EnforcementCheck{Name: r.Name, OK: r.OK, Detail: r.Detail, Unchecked: r.Unchecked})
			if !r.OK && !r.Unchecked {
				pool.Close() // the deferred Put then closes first
				return fmt.Errorf("%w: token %s fails the %q check: %s (use export policy none on this token)", ErrUnsupported, tok, r.Name, r.Detail)
			}
		}
	}
	return nil
}

// checkMechanisms refuses a token without the mechanisms session keys need.
func (p *Provider) checkMechanisms() error {
	mechs, err := p.mod.Mechanisms(p.token.Slot)
	if err != nil {
		return mapErr(err)
	}
	for _, m := range []struct {
		t    uint
		name string
	}{{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN"}, {pkcs11.CKM_AES_GCM, "CKM_AES_GCM"}, {pkcs11.CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP"}} {
		if !slices.Contains(mechs, m.t) {
			return fmt.Errorf("%w: token %s lacks %s", ErrUnsupported, p.token, m.name)
		}
	}
	return nil
}

func (p *Provider) loginErr(err error) error {
	code, ok := p11.CodeOf(err)
	if !ok {
		return mapErr(err)
	}
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		pe := &PINError{err: err, Locked: code == pkcs11.CKR_PIN_LOCKED}
		if flags, ferr := p.mod.TokenFlags(p.token.Slot); ferr == nil {
			pe.CountLow = flags&pkcs11.CKF_USER_PIN_COUNT_LOW != 0
			pe.FinalTry = flags&pkcs11.CKF_USER_PIN_FINAL_TRY != 0
			pe.Locked = pe.Locked || flags&pkcs11.CKF_USER_PIN_LOCKED != 0
		}
		return pe
	}
	return mapErr(err)
}

func selectToken(cfg Config, all []TokenInfo) (TokenInfo, error) {
	var want []string
	if cfg.TokenLabel != "" {
		want = append(want, fmt.Sprintf("label %q", cfg.TokenLabel))
	}
	if cfg.TokenSerial != "" {
		want = append(want, fmt.Sprintf("serial %q", cfg.TokenSerial))
	}
	if cfg.Slot != nil {
		want = append(want, fmt.Sprintf("slot %d", *cfg.Slot))
	}
	var match []TokenInfo
	for _, t := range all {
		if t.Initialized && (cfg.TokenLabel == "" || t.Label == cfg.TokenLabel) &&
			(cfg.TokenSerial == "" || t.Serial == cfg.TokenSerial) &&
			(cfg.Slot == nil || t.Slot == *cfg.Slot) {
			match = append(match, t)
		}
	}
	switch {
	case len(match) == 1:
		return match[0], nil
	case len(match) == 0 && len(want) == 0:
		return TokenInfo{}, &TokenNotFoundError{Want: "(any)", Tokens: all}
	case len(match) == 0:
		return TokenInfo{}, &TokenNotFoundError{Want: joinAnd(want), Tokens: all}
	default:
		w := "(any)"
		if len(want) > 0 {
			w = joinAnd(want)
		}
		return TokenInfo{}, fmt.Errorf("%w: %d tokens match %s; name one by serial or slot: %v", ErrConfig, len(match), w, match)
	}
}

func joinAnd(s []string) string {
	out := s[0]
	for _, x := range s[1:] {
		out += " and " + x
	}
	return out
}

// Token describes the token this provider opened.
func (p *Provider) Token() TokenInfo { return p.token }

// Sessions is the number of sessions the provider holds open now.
func (p *Provider) Sessions() int { return p.pool.Open() }

// begin marks an operation in flight; end must follow.
func (p *Provider) begin() error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (p *Provider) end() { p.mu.RUnlock() }

// do runs fn on a pooled session. When the token reports the session dead,
// the pool learns which sessions are gone and fn is tried once more on a
// fresh session (after a new login if the login state was lost).
func (p *Provider) do(ctx context.Context, fn func(s *p11.Session) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		s, err := p.pool.Get(ctx)
		if err != nil {
			return p.loginErr(err)
		}
		err = fn(s)
		retry := err != nil && p.pool.Check(s, err)
		p.pool.Put(s)
		if !retry || attempt > 0 || ctx.Err() != nil {
			return err
		}
	}
}

// Close destroys every session key this provider made, closes its sessions
// and releases the module. It waits for operations in flight. Keys used after
// Close return ErrKeyDestroyed. Close is idempotent.
func (p *Provider) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()

	p.keysMu.Lock()
	keys := p.keys
	p.keys = nil
	p.keysMu.Unlock()

	var errs []error
	ctx := context.Background()
	for k := range keys {
		if err := k.destroy(ctx, false); err != nil && !errors.Is(err, ErrKeyLost) && !errors.Is(err, ErrKeyDestroyed) {
			errs = append(errs, err)
		}
	}
	p.pool.Close()
	clear(p.pin)
	if err := p.mod.Release(); err != nil {
		errs = append(errs, mapErr(err))
	}
	return errors.Join(errs...)
}

// mapErr adds the sentinel a caller branches on to a token error.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, p11.ErrModuleLoad):
		return fmt.Errorf("%w: %w", ErrConfig, err)
	case errors.Is(err, p11.ErrInput):
		return fmt.Errorf("%w: %w", ErrInvalidInput, err)
	case errors.Is(err, p11.ErrPolicyIgnored):
		return fmt.Errorf("%w: %w", ErrPolicy, err)
	case errors.Is(err, p11.ErrPoolClosed):
		return ErrClosed
	case errors.Is(err, p11.ErrWrappedKeyInvalid):
		return fmt.Errorf("%w: %w", ErrWrappedKeyInvalid, err)
	}
	code, ok := p11.CodeOf(err)
	if !ok {
		return err
	}
	switch code {
	case pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return fmt.Errorf("%w: %w", ErrTokenUnavailable, err)
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return err
}

// CountSessionKeys counts the secret keys that are session objects
// (CKA_TOKEN=false) visible to this process on the token: the keys of every
// provider of this process on the same token, and nothing of other processes
// (PKCS#11 v2.40 §4.4: session objects are visible only to their application).
func (p *Provider) CountSessionKeys(ctx context.Context) (int, error) {
	if err := p.begin(); err != nil {
		return 0, err
	}
	defer p.end()
	var n int
	err := p.do(ctx, func(s *p11.Session) error {
		objs, err := p.pool.Find(s, map[uint]any{
			pkcs11.CKA_CLASS: pkcs11.CKO_SECRET_KEY,
			pkcs11.CKA_TOKEN: false,
		}, 1<<20)
		n = len(objs)
		return err
	})
	return n, mapErr(err)
}
