package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

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
	// SlotDescription and SlotManufacturer are the slot's C_GetSlotInfo
	// text (PKCS#11 v2.40 §5.5), matched by a URI's slot-description and
	// slot-manufacturer.
	SlotDescription, SlotManufacturer string
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

	closing   atomic.Bool   // Shutdown began: no new operation starts
	closeOnce sync.Once     // starts the shutdown work (finish)
	closeDone chan struct{} // closed when finish is done
	closeErr  error         // what finish found; read after closeDone
	// shutMu orders finish and the early destruction of idle keys when a
	// Shutdown's context ends first; finished is set by finish.
	shutMu   sync.Mutex
	finished bool

	keysMu sync.Mutex
	keys   map[*Key]struct{}

	pin []byte // kept to restore a lost login once; cleared by Close

	// checked holds the kinds of key (a p11.SecretKeySpec for Generate,
	// an unwrapKind for Unwrap) whose first key was read back (CheckFirstKey).
	checked sync.Map
	kcvAttr atomic.Int32 // kcvAttrUnknown, kcvAttrGood or kcvAttrBad

	keks   kekCache
	cache  *keyCache // Config.DataKeyCache; nil when off
	oaepMu sync.Mutex
	oaep   WrapMechanism // the OAEP variant the token accepted, once known

	// Enforcement is what the export-policy checks at Open found.
	enforcement []EnforcementCheck

	obs *observer // Config.Logger and Config.Metrics; nil when neither is set
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
	// Needs is the export policy the row matters for, in Doctor: "none"
	// for what every use needs (session keys, seal and open, messages'
	// content), "trusted" for what only exporting and importing keys
	// (wrapping under KEKs) needs; "" for information.
	Needs string
}

// Enforcement returns the checks Open made of the export policy; empty under
// ExportNone.
func (p *Provider) Enforcement() []EnforcementCheck { return slices.Clone(p.enforcement) }

// Tokens lists the tokens present in the module at path (empty:
// DefaultModule): TokensOf with Config{Module: path} and a context that
// never ends.
//
// Deprecated: use TokensOf, whose waits end with its context and which
// passes Config.InitArgs to the module.
func Tokens(path string) ([]TokenInfo, error) {
	return TokensOf(context.Background(), Config{Module: path})
}

// TokensOf lists the tokens present in cfg's module (Config.Module, the
// URI's module-path or module-name, else DefaultModule), initialised with
// cfg.InitArgs. The URI's token attributes do not filter the list. A
// transient failure (SoftHSM's file store while other processes use the
// token) is tried again a few times, loading the module anew, with a short
// wait between tries that ends with ctx.
func TokensOf(ctx context.Context, cfg Config) ([]TokenInfo, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	var ts []TokenInfo
	err = retryBusy(ctx, newObserver(cfg), func(err error, tries int) error { return openFailed(err, tries, false) }, func(int) error {
		mod, err := p11.Load(cfg.Module, cfg.InitArgs)
		if err != nil {
			return mapErr(err)
		}
		ts, err = tokens(mod)
		mod.Release()
		return err
	})
	if err != nil {
		return nil, err
	}
	return ts, nil
}

// retryBusy calls attempt until it succeeds or fails for good: when
// openTransient says the error is not one to try again, or after
// p11.MaxTries tries. Between tries it tells obs and waits p11.Backoff,
// which ends with ctx. What it returns on failure is giveUp(err, tries),
// wrapped in ctx's error when a wait was cut short. Open, TokensOf,
// OpenAdmin and admin sessions meet a busy token through it.
func retryBusy(ctx context.Context, obs *observer, giveUp func(err error, tries int) error, attempt func(try int) error) error {
	for try := 1; ; try++ {
		err := attempt(try)
		if err == nil {
			return nil
		}
		if !openTransient(err, try) || try == p11.MaxTries {
			return giveUp(err, try)
		}
		obs.retry(err, try+1)
		if werr := p11.Backoff(ctx, try+1); werr != nil {
			return fmt.Errorf("%w (waiting to try again after: %w)", werr, giveUp(err, try))
		}
	}
}

func tokens(mod *p11.Module) ([]TokenInfo, error) {
	ts, err := mod.Tokens()
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]TokenInfo, len(ts))
	for i, t := range ts {
		out[i] = TokenInfo{Slot: t.Slot, Label: t.Label, Serial: t.Serial, Model: t.Model, Manufacturer: t.Manufacturer, Initialized: t.Initialized,
			SlotDescription: t.SlotDescription, SlotManufacturer: t.SlotManufacturer}
	}
	return out, nil
}

// Open loads the module, finds the token, reads the PIN once and logs in.
// A PIN the token refuses gives a *PINError and is not tried again.
// (Key.Open is another thing: it opens what Key.Seal sealed.)
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
	cache, err := newKeyCache(cfg.DataKeyCache)
	if err != nil {
		return nil, err
	}
	if cache != nil && cache.lim.MaxMessages > cfg.MaxSealsPerKey {
		cache.lim.MaxMessages = cfg.MaxSealsPerKey // a cached key never reaches ErrKeyExhausted
	}
	// A token may fail to open for a moment (SoftHSM's file store under
	// several processes, SoftHSMv2 #757): it is missing from the slot list,
	// or C_GetTokenInfo, C_OpenSession or C_Login fail with
	// CKR_GENERAL_ERROR. SoftHSM reads its token directory only in
	// C_Initialize, so each try loads the module again (C_Finalize and
	// C_Initialize when no other part of the process holds it). The PIN is
	// read once for all tries.
	var pin []byte
	var opened *Provider
	seen := false
	obs := newObserver(cfg)
	err = retryBusy(ctx, obs, func(err error, tries int) error { return openFailed(err, tries, seen) }, func(try int) error {
		mod, err := p11.Load(cfg.Module, cfg.InitArgs)
		if err != nil {
			return mapErr(err)
		}
		p := &Provider{mod: mod, cfg: cfg, keys: map[*Key]struct{}{}, pin: pin, closeDone: make(chan struct{}), obs: obs, cache: cache}
		if err := p.open(ctx); err != nil {
			pin = p.pin
			seen = seen || p.token.Label != "" || p.token.Serial != ""
			mod.Release()
			return err
		}
		p.obs.opened(p, try)
		opened = p
		return nil
	})
	if err != nil {
		clear(pin)
		return nil, err
	}
	return opened, nil
}

// OpenDiagnostic opens the token as Open does, under ExportNone, but does
// not refuse it for what it lacks (CKM_AES_GCM, AES key wrap) or fails to
// enforce: it is for Doctor, which reports every such thing. Operations
// the token cannot do fail when tried.
func OpenDiagnostic(ctx context.Context, cfg Config) (*Provider, error) {
	cfg.ExportPolicy = ExportNone
	cfg.diagnostic = true
	return Open(ctx, cfg)
}

// openTransient reports whether Open may try again after err (try tries
// so far): the token was not in the slot list, or a call that had no effect
// failed as a busy token's calls do (p11.Transient). A refused PIN never
// is. When the module shows other initialised tokens, a missing one is more
// likely a typo than a token that failed to load, and gets 3 tries.
func openTransient(err error, try int) bool {
	var tnf *TokenNotFoundError
	if errors.As(err, &tnf) {
		return try < 3 || !slices.ContainsFunc(tnf.Tokens, func(t TokenInfo) bool { return t.Initialized })
	}
	return p11.Transient(err)
}

// openFailed says how often Open tried, and whether an earlier try saw the
// token it could not open at the end.
func openFailed(err error, tries int, seen bool) error {
	var tnf *TokenNotFoundError
	if errors.As(err, &tnf) {
		tnf.Tries, tnf.Seen = tries, seen
		return err
	}
	if p11.Transient(err) {
		return fmt.Errorf("%w: %w (tried %d times)", ErrTokenBusy, err, tries)
	}
	return err
}

func (p *Provider) open(ctx context.Context) error {
	all, err := tokens(p.mod)
	if err != nil {
		return err
	}
	tok, err := selectToken(p.cfg, p.mod, all)
	if err != nil {
		return err
	}
	p.token = tok
	if !p.cfg.diagnostic {
		if err := p.checkMechanisms(); err != nil {
			return err
		}
	}
	if p.cfg.PIN == nil {
		return fmt.Errorf("%w: no pin source (session keys are private objects and need a login)", ErrConfig)
	}
	if p.pin == nil {
		pin, err := p.cfg.PIN.ReadPIN(ctx, tok)
		if err != nil {
			return err
		}
		p.pin = pin
	}
	pool, first, err := p11.NewPool(p.mod, tok.Slot, p.cfg.MaxSessions, func() ([]byte, error) {
		return bytes.Clone(p.pin), nil
	})
	if err != nil {
		return p.loginErr(err)
	}
	p.pool = pool
	pool.SetHooks(p.obs.poolHooks())
	defer pool.Put(first)
	p.probeProfile(first)
	if p.cfg.ExportPolicy == ExportTrusted && !p.cfg.diagnostic {
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
		pe := &PINError{err: withTokenError(err), Locked: code == pkcs11.CKR_PIN_LOCKED}
		if flags, ferr := p.mod.TokenFlags(p.token.Slot); ferr == nil {
			pe.CountLow = flags&pkcs11.CKF_USER_PIN_COUNT_LOW != 0
			pe.FinalTry = flags&pkcs11.CKF_USER_PIN_FINAL_TRY != 0
			pe.Locked = pe.Locked || flags&pkcs11.CKF_USER_PIN_LOCKED != 0
		}
		return pe
	}
	return mapErr(err)
}

// selectToken picks the one initialised token that matches every attribute
// cfg names (RFC 7512 §3.3 for a URI's).
func selectToken(cfg Config, mod *p11.Module, all []TokenInfo) (TokenInfo, error) {
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
	want = append(want, cfg.match.wants()...)
	libDiff, err := cfg.match.library(mod)
	if err != nil {
		return TokenInfo{}, err
	}
	if libDiff != "" {
		return TokenInfo{}, &TokenNotFoundError{Want: joinAnd(append(want, libDiff)), Tokens: all}
	}
	var match []TokenInfo
	for _, t := range all {
		if t.Initialized && (cfg.TokenLabel == "" || t.Label == cfg.TokenLabel) &&
			(cfg.TokenSerial == "" || t.Serial == cfg.TokenSerial) &&
			(cfg.Slot == nil || t.Slot == *cfg.Slot) && cfg.match.token(t) {
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
	if p.closing.Load() {
		// Checked first: a Shutdown waiting for mu would make RLock wait.
		return ErrClosed
	}
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
//
// A session that failed to open transiently (p11.Transient: nothing was
// opened) is tried again a few times, with a short wait that ends with ctx.
func (p *Provider) do(ctx context.Context, fn func(s *p11.Session) error) error {
	return p.doTries(ctx, false, fn)
}

// doRead is do for fn that only reads (object searches, attribute values):
// a transient failure of fn (p11.Transient) is tried again as well.
func (p *Provider) doRead(ctx context.Context, fn func(s *p11.Session) error) error {
	return p.doTries(ctx, true, fn)
}

func (p *Provider) doTries(ctx context.Context, reads bool, fn func(s *p11.Session) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for attempt, tries := 0, 1; ; {
		s, err := p.pool.Get(ctx)
		if err != nil {
			if p11.Transient(err) && tries < p11.MaxTries {
				tries++
				p.obs.retry(err, tries)
				if werr := p11.Backoff(ctx, tries); werr == nil {
					continue
				}
			}
			return p.loginErr(err)
		}
		err = fn(s)
		retry := err != nil && p.pool.Check(s, err)
		p.pool.Put(s)
		if reads && !retry && p11.Transient(err) && tries < p11.MaxTries {
			tries++
			p.obs.retry(err, tries)
			if werr := p11.Backoff(ctx, tries); werr == nil {
				continue
			}
			return err
		}
		if !retry || attempt > 0 || ctx.Err() != nil {
			return err
		}
		attempt++
		p.obs.retry(err, attempt+1)
	}
}

// doDetached is do for work that must happen even when ctx is done
// (destroying a key): ctx only bounds the wait for a session, and once it
// is done a session is taken only if one is free at once (p11.ErrPoolBusy
// if not). The token call itself runs whatever ctx says.
func (p *Provider) doDetached(ctx context.Context, fn func(s *p11.Session) error) error {
	for attempt := 0; ; attempt++ {
		var s *p11.Session
		var err error
		if ctx.Err() == nil {
			s, err = p.pool.Get(ctx)
		}
		if s == nil && ctx.Err() != nil {
			s, err = p.pool.TryGet()
		}
		if err != nil {
			return p.loginErr(err)
		}
		err = fn(s)
		retry := err != nil && p.pool.Check(s, err)
		p.pool.Put(s)
		if !retry || attempt > 0 {
			return err
		}
		p.obs.retry(err, attempt+2)
	}
}

// Close destroys every session key this provider made, closes its sessions
// and releases the module. It waits for operations in flight, without
// bound: Shutdown bounds the wait. Keys used after Close return
// ErrKeyDestroyed. Close is idempotent; every call returns what the first
// found.
func (p *Provider) Close() error { return p.Shutdown(context.Background()) }

// Shutdown is Close with a bound on the wait. New operations fail with
// ErrClosed at once; operations in flight may finish. An operation blocked
// in the caller's reader or writer (an Encrypt whose src.Read does not
// return) ends with ErrClosed when that call returns.
//
// If ctx ends first, Shutdown destroys the keys no operation is using and
// returns ctx's error; the rest of the work (the keys in use, the sessions,
// the module) is done when the last operation in flight ends. Shutdown and
// Close may be called again, and then wait for that work.
func (p *Provider) Shutdown(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.closing.Store(true)
		go func() {
			p.closeErr = p.finish()
			close(p.closeDone)
		}()
	})
	select {
	case <-p.closeDone:
		return p.closeErr
	default:
	}
	select {
	case <-p.closeDone:
		return p.closeErr
	case <-ctx.Done():
	}
	p.destroyIdleKeys()
	return fmt.Errorf("shutdown: %w: operations still in flight; their keys, the sessions and the module are released when they end", context.Cause(ctx))
}

// finish waits for the operations in flight, then destroys every key left,
// closes the sessions and releases the module.
func (p *Provider) finish() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.shutMu.Lock()
	defer p.shutMu.Unlock()
	p.finished = true
	if p.cache != nil {
		p.cache.close() // its keys are among p.keys, destroyed below
	}

	p.keysMu.Lock()
	keys := p.keys
	p.keys = nil
	p.keysMu.Unlock()

	var errs []error
	ctx := context.Background()
	for k := range keys {
		if err := k.destroy(ctx); err != nil && !errors.Is(err, ErrKeyLost) && !errors.Is(err, ErrKeyDestroyed) {
			errs = append(errs, err)
		}
	}
	p.pool.Close()
	clear(p.pin)
	if err := p.mod.Release(); err != nil {
		errs = append(errs, mapErr(err))
	}
	p.obs.closed(p, len(keys), errors.Join(errs...))
	return errors.Join(errs...)
}

// destroyIdleKeys destroys, while operations are still in flight, the keys
// none of them is using, on sessions that are free at once; finish destroys
// the others. Errors are left for finish, which tries again.
func (p *Provider) destroyIdleKeys() {
	p.shutMu.Lock()
	defer p.shutMu.Unlock()
	if p.finished {
		return
	}
	p.keysMu.Lock()
	keys := make([]*Key, 0, len(p.keys))
	for k := range p.keys {
		keys = append(keys, k)
	}
	p.keysMu.Unlock()
	done, cancel := context.WithCancel(context.Background())
	cancel() // take free sessions only; never wait behind the operations
	for _, k := range keys {
		if k.mu.TryLock() {
			_ = k.destroyLocked(done)
			k.mu.Unlock()
		}
	}
}

// closingReader, closingReaderAt and closingWriter end an operation with
// ErrClosed at its next read or write once Shutdown has begun, so that an
// operation blocked in the caller's reader or writer ends when that call
// returns.
type closingReader struct {
	p *Provider
	r io.Reader
}

func (c closingReader) Read(b []byte) (int, error) {
	if c.p.closing.Load() {
		return 0, ErrClosed
	}
	n, err := c.r.Read(b)
	if c.p.closing.Load() {
		return 0, ErrClosed
	}
	return n, err
}

type closingReaderAt struct {
	p *Provider
	r io.ReaderAt
}

func (c closingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	if c.p.closing.Load() {
		return 0, ErrClosed
	}
	n, err := c.r.ReadAt(b, off)
	if c.p.closing.Load() {
		return 0, ErrClosed
	}
	return n, err
}

type closingWriter struct {
	p *Provider
	w io.Writer
}

func (c closingWriter) Write(b []byte) (int, error) {
	if c.p.closing.Load() {
		return 0, ErrClosed
	}
	n, err := c.w.Write(b)
	if err == nil && c.p.closing.Load() {
		return n, ErrClosed
	}
	return n, err
}

// mapErr adds the sentinel a caller branches on to a token error, and
// makes the token's code reachable as a *TokenError.
func mapErr(err error) error { return withTokenError(mapSentinel(err)) }

func mapSentinel(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, p11.ErrModuleLoad), errors.Is(err, p11.ErrInitArgs):
		return fmt.Errorf("%w: %w", ErrConfig, err)
	case errors.Is(err, p11.ErrInput):
		return fmt.Errorf("%w: %w", ErrInvalidInput, err)
	case errors.Is(err, p11.ErrPolicyIgnored):
		return fmt.Errorf("%w: %w", ErrPolicy, err)
	case errors.Is(err, p11.ErrPoolClosed):
		return ErrClosed
	case errors.Is(err, p11.ErrWrappedKeyInvalid):
		return fmt.Errorf("%w: %w", ErrWrappedKeyInvalid, err)
	case errors.Is(err, p11.ErrTokenIV), errors.Is(err, p11.ErrTooLarge), errors.Is(err, p11.ErrNoStreaming):
		// What the token's profile says it cannot do (profile.go).
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
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
	err := p.doRead(ctx, func(s *p11.Session) error {
		objs, err := p.pool.Find(s, map[uint]any{
			pkcs11.CKA_CLASS: pkcs11.CKO_SECRET_KEY,
			pkcs11.CKA_TOKEN: false,
		}, 1<<20)
		n = len(objs)
		return err
	})
	return n, mapErr(err)
}
