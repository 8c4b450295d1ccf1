package p11

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// Session is one PKCS#11 session of a Pool. A Session is used by one
// goroutine at a time (between Pool.Get and Pool.Put); its Dead flag may be
// read by any goroutine.
type Session struct {
	h    pkcs11.SessionHandle
	dead atomic.Bool
}

// Dead reports whether the token has closed this session. Every session
// object created in it is gone (PKCS#11 v2.40 §4.4).
func (s *Session) Dead() bool { return s.dead.Load() }

// sessionCountRetry is how often a caller waiting at the token's session
// limit tries to open a session again.
const sessionCountRetry = 50 * time.Millisecond

// ErrPoolClosed: a session was to be opened after Close.
var ErrPoolClosed = errors.New("session pool closed")

// Pool is a bounded set of read-write sessions on one token, all logged in
// as the user through one C_Login (login is per application, not per session:
// PKCS#11 v2.40 §5.6, C_Login). A session is never closed while the pool is
// open unless the token reports it dead, so the session objects it owns live
// as long as the pool does. Pool is safe for concurrent use.
type Pool struct {
	mod  *Module
	slot uint

	idle  chan *Session // sessions ready for use
	slots chan struct{} // one token per open session; capacity = max
	pairs chan struct{} // holders of two sessions at once; capacity max/2
	pin   func() ([]byte, error)

	prof *Profile // what differs on this token (profile.go); set once before use

	mu     sync.Mutex // guards all and closed; never held across a token call
	all    map[*Session]struct{}
	closed bool

	// loginMu serialises the login check of new sessions, a token call
	// (C_GetSessionInfo, then C_Login if needed), apart from mu: Put and
	// discard never wait for it.
	loginMu sync.Mutex
	pinErr  error // the login error of a rejected PIN, returned from then on
	logins  int   // successful C_Login calls (the first, then restorations)
	// loggedIn: some session of ours was seen logged in; the next ones
	// check theirs without loginMu.
	loggedIn atomic.Bool

	hooks Hooks // set once, before the pool is shared
}

// Hooks are told what the pool does, for logs and metrics; nil ones are
// not called. They run on the goroutine of the operation, outside the
// pool's locks, and must be quick and not use the pool.
type Hooks struct {
	// WaitBegin: every session is in use and Get starts to wait.
	WaitBegin func()
	// WaitEnd: the wait WaitBegin announced ended after d, with a session
	// or with the context's end.
	WaitEnd func(d time.Duration)
	// Relogin: the token had lost the login state and the pool logged in
	// again.
	Relogin func()
}

// SetHooks sets the hooks. Call it before the pool is used by more than
// one goroutine.
func (p *Pool) SetHooks(h Hooks) { p.hooks = h }

// NewPool opens the first session on slot and logs the user in with the PIN
// that pin returns. pin is called again only if the token loses the login
// state (all sessions closed under us) and a new session must log in.
func NewPool(mod *Module, slot uint, max int, pin func() ([]byte, error)) (*Pool, *Session, error) {
	if max < 1 {
		max = 1
	}
	p := &Pool{
		mod:   mod,
		slot:  slot,
		idle:  make(chan *Session, max),
		slots: make(chan struct{}, max),
		pairs: make(chan struct{}, max/2),
		pin:   pin,
		all:   map[*Session]struct{}{},
	}
	p.slots <- struct{}{}
	s, err := p.open()
	if err != nil {
		<-p.slots
		return nil, nil, err
	}
	return p, s, nil
}

// Slot is the slot this pool's token sits in.
func (p *Pool) Slot() uint { return p.slot }

// Module is the module this pool's sessions belong to.
func (p *Pool) Module() *Module { return p.mod }

// ctx is the binding seen through miekg's signatures, for this package.
func (p *Pool) ctx() *ckraw.Ctx { return p.mod.ctx }

// open opens a session and makes sure the application is logged in. The
// caller holds a token in p.slots.
func (p *Pool) open() (*Session, error) {
	s, err := p.openOnce()
	if code, _ := CodeOf(err); code == pkcs11.CKR_SESSION_HANDLE_INVALID || code == pkcs11.CKR_SESSION_CLOSED {
		// Closed before its first use (a token restart between
		// C_OpenSession and the login check): nothing was lost, open
		// another.
		s, err = p.openOnce()
	}
	return s, err
}

func (p *Pool) openOnce() (*Session, error) {
	h, err := p.ctx().OpenSession(p.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, wrapErr("C_OpenSession", err)
	}
	s := &Session{h: h}
	if err := p.ensureLogin(s); err != nil {
		_ = p.ctx().CloseSession(h)
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = p.ctx().CloseSession(h)
		return nil, ErrPoolClosed
	}
	p.all[s] = struct{}{}
	p.mu.Unlock()
	return s, nil
}

// ensureLogin logs in through s unless the application already is. A PIN the
// token rejected is never tried twice.
func (p *Pool) ensureLogin(s *Session) error {
	relogin, err := p.ensureLoginLocked(s)
	if relogin && p.hooks.Relogin != nil {
		p.hooks.Relogin()
	}
	return err
}

// ensureLoginLocked is ensureLogin under loginMu; relogin reports a login
// that restored a lost one.
func (p *Pool) ensureLoginLocked(s *Session) (relogin bool, _ error) {
	// The state is read under loginMu: sessions opened at once after a
	// lost login then send one C_Login between them, not one each.
	// Once logged in, the usual answer is "still logged in": sessions
	// opened at once check that in parallel (64 sessions at 1 ms per call
	// opened in 64 ms one after the other before), and only one that finds
	// the login lost takes the lock and asks again.
	if p.loggedIn.Load() {
		info, err := p.ctx().GetSessionInfo(s.h)
		if err != nil {
			return false, wrapErr("C_GetSessionInfo", err)
		}
		if userState(info.State) {
			return false, nil
		}
	}
	p.loginMu.Lock()
	defer p.loginMu.Unlock()
	info, err := p.ctx().GetSessionInfo(s.h)
	if err != nil {
		return false, wrapErr("C_GetSessionInfo", err)
	}
	if userState(info.State) {
		p.loggedIn.Store(true)
		return false, nil
	}
	if p.pinErr != nil {
		return false, p.pinErr
	}
	if p.pin == nil {
		return false, nil // public sessions only
	}
	pin, err := p.pin()
	if err != nil {
		return false, err
	}
	err = p.ctx().Login(s.h, pkcs11.CKU_USER, string(pin))
	clear(pin)
	if code, ok := CodeOf(err); ok && code == pkcs11.CKR_USER_ALREADY_LOGGED_IN {
		err = nil
	}
	if err != nil {
		err = wrapErr("C_Login", err)
		if code, _ := CodeOf(err); isPINCode(code) {
			p.pinErr = err
		}
		return false, err
	}
	p.logins++
	p.loggedIn.Store(true)
	return p.logins > 1, nil
}

// userState reports whether a session state is one of the user's
// (PKCS#11 v2.40 §5.6, Table 9).
func userState(st uint) bool {
	return st == pkcs11.CKS_RW_USER_FUNCTIONS || st == pkcs11.CKS_RO_USER_FUNCTIONS
}

func isPINCode(code uint) bool {
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		return true
	}
	return false
}

// Get returns a live session for exclusive use until Put, opening one if
// fewer than max are open, or waiting for one; waiting ends with ctx.
func (p *Pool) Get(ctx context.Context) (*Session, error) {
	var waitStart time.Time // set when every session was in use
	defer func() {
		if !waitStart.IsZero() && p.hooks.WaitEnd != nil {
			p.hooks.WaitEnd(time.Since(waitStart))
		}
	}()
	for {
		var s *Session
		select {
		case s = <-p.idle:
		default:
			if len(p.slots) == cap(p.slots) {
				// Every session is in use: a wait, for the hooks (a
				// session may still come back at once).
				p.beginWait(&waitStart)
			}
			select {
			case s = <-p.idle:
			case p.slots <- struct{}{}:
				var err error
				s, err = p.open()
				if err != nil {
					<-p.slots
					if code, _ := CodeOf(err); code == pkcs11.CKR_SESSION_COUNT && len(p.slots) > 0 {
						// The token holds fewer sessions than we may, and
						// some of ours are open or being opened: wait for
						// one (PKCS#11 v2.40 §5.6). Ours may die instead of
						// coming back, so try to open again now and then.
						p.beginWait(&waitStart)
						retry := time.NewTimer(sessionCountRetry)
						select {
						case s = <-p.idle:
							retry.Stop()
						case <-retry.C:
							continue
						case <-ctx.Done():
							retry.Stop()
							return nil, ctx.Err()
						}
						break
					}
					return nil, err
				}
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if s.Dead() {
			p.discard(s)
			continue
		}
		return s, nil
	}
}

// beginWait marks the start of a wait of Get in *start, once, and tells
// the hooks; without hooks it does nothing.
func (p *Pool) beginWait(start *time.Time) {
	if !start.IsZero() || p.hooks.WaitBegin == nil && p.hooks.WaitEnd == nil {
		return
	}
	*start = time.Now()
	if p.hooks.WaitBegin != nil {
		p.hooks.WaitBegin()
	}
}

// ErrPoolBusy: TryGet found every session in use and no room for another.
var ErrPoolBusy = errors.New("every session is in use")

// TryGet is Get without waiting: an idle session, or a new one if fewer
// than max are open, else ErrPoolBusy. It is for work that must be done
// even after its context ended (destroying a key).
func (p *Pool) TryGet() (*Session, error) {
	for {
		select {
		case s := <-p.idle:
			if s.Dead() {
				p.discard(s)
				continue
			}
			return s, nil
		default:
		}
		select {
		case p.slots <- struct{}{}:
			s, err := p.open()
			if err != nil {
				<-p.slots
				return nil, err
			}
			return s, nil
		default:
			return nil, ErrPoolBusy
		}
	}
}

// GetPair returns two sessions, for work that needs two operations active
// at once (a token runs one operation per session: SoftHSM answers
// CKR_OPERATION_ACTIVE). At most max/2 callers hold pairs, so that pair
// holders waiting for their second session cannot starve each other.
func (p *Pool) GetPair(ctx context.Context) (*Session, *Session, error) {
	if cap(p.pairs) == 0 {
		return nil, nil, fmt.Errorf("%w: this needs two sessions at once and the pool holds %d", ErrInput, cap(p.slots))
	}
	select {
	case p.pairs <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	a, err := p.Get(ctx)
	if err != nil {
		<-p.pairs
		return nil, nil, err
	}
	b, err := p.Get(ctx)
	if err != nil {
		p.Put(a)
		<-p.pairs
		return nil, nil, err
	}
	return a, b, nil
}

// PutPair returns what GetPair gave.
func (p *Pool) PutPair(a, b *Session) {
	p.Put(a)
	p.Put(b)
	<-p.pairs
}

// Put returns s to the pool. A dead session is dropped and its place freed.
func (p *Pool) Put(s *Session) {
	if s.Dead() {
		p.discard(s)
		return
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		p.discard(s)
		return
	}
	p.idle <- s
}

func (p *Pool) discard(s *Session) {
	p.mu.Lock()
	_, ok := p.all[s]
	delete(p.all, s)
	closed := p.closed
	p.mu.Unlock()
	if !ok {
		return
	}
	if !s.Dead() || closed {
		_ = p.ctx().CloseSession(s.h)
	}
	<-p.slots
}

// Open is the number of sessions this pool holds.
func (p *Pool) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all)
}

// Relogins is how often the pool found its login lost and logged in again.
func (p *Pool) Relogins() int {
	p.loginMu.Lock()
	defer p.loginMu.Unlock()
	return max(p.logins-1, 0)
}

// SessionDead reports whether code means the session (or every session) is
// gone: PKCS#11 v2.40 §5.1 return values for a closed session or removed token.
func SessionDead(code uint) bool {
	switch code {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return true
	}
	return false
}

// Check looks at the error of an operation made on s. When the token says
// the session is gone, s is marked dead and every other session of the pool
// is probed, so that the owners of lost session objects are known before any
// replacement session is opened (a token may reuse handle numbers). When the
// login state is lost, it is restored once. Check reports whether the
// operation may be retried on another session.
func (p *Pool) Check(s *Session, err error) (retry bool) {
	code, ok := CodeOf(err)
	if !ok {
		return false
	}
	switch {
	case SessionDead(code):
		s.dead.Store(true)
		p.Sweep()
		return true
	case code == pkcs11.CKR_USER_NOT_LOGGED_IN:
		p.Sweep()
		return p.ensureLogin(s) == nil
	}
	return false
}

// CheckAny is Check for an error of work that used several sessions: the
// sweep finds which of them died.
func (p *Pool) CheckAny(err error) {
	code, ok := CodeOf(err)
	if !ok {
		return
	}
	switch {
	case SessionDead(code):
		p.Sweep()
	case code == pkcs11.CKR_USER_NOT_LOGGED_IN:
		p.Sweep()
		if s, err := p.anySession(); err == nil {
			_ = p.ensureLogin(s)
		}
	}
}

// anySession returns some live session of the pool, for a login.
func (p *Pool) anySession() (*Session, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.all {
		if !s.Dead() {
			return s, nil
		}
	}
	return nil, ErrPoolClosed
}

// Sweep probes every session of the pool with C_GetSessionInfo and marks
// the closed ones dead.
func (p *Pool) Sweep() {
	p.mu.Lock()
	list := make([]*Session, 0, len(p.all))
	for s := range p.all {
		list = append(list, s)
	}
	p.mu.Unlock()
	for _, s := range list {
		if s.Dead() {
			continue
		}
		if _, err := p.ctx().GetSessionInfo(s.h); err != nil {
			if code, _ := CodeOf(err); SessionDead(code) {
				s.dead.Store(true)
			}
		}
	}
}

// Close closes every session of the pool; the session objects in them are
// destroyed by the token. Sessions in use are closed when they are Put.
// Close is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	for {
		select {
		case s := <-p.idle:
			p.discard(s)
		default:
			return
		}
	}
}

// Transient reports whether err is a failure that the same call may not
// repeat and whose call had no effect, so that making it again is safe:
// a general, device or function failure (PKCS#11 v2.40 §5.1.1, §5.1.2) of a
// call that only reads (slot, token, mechanism and session information,
// object searches, attribute values) or that leaves nothing behind when it
// fails (C_OpenSession returns no handle).
//
// SoftHSM's file object store answers this way when several processes use
// one token (SoftHSMv2 #757): a process reads token.object while another
// rewrites it, and C_Login rewrites it every time (Token::loginUser clears
// CKF_USER_PIN_COUNT_LOW).
//
// C_Login counts only with CKR_GENERAL_ERROR, which SoftHSM returns when it
// cannot read the token's flags, before it looks at the PIN, and with
// CKR_USER_PIN_NOT_INITIALIZED, which it returns (also before the PIN) when
// it loaded the token from a half-written file. A PIN the token
// looked at and refused is CKR_PIN_INCORRECT (§5.6, C_Login) and is never
// tried again; a device error during a login might have cost a try, so it
// is not retried.
//
// Calls that create or destroy objects (C_GenerateKey, C_UnwrapKey,
// C_CreateObject, C_DestroyObject), that change an operation's state
// (C_EncryptUpdate and the like) or that consume input are not transient
// here whatever their code: a failed C_GenerateKey may have left an object
// whose handle nobody knows, and a retried update would encrypt a part twice.
func Transient(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	if e.Op == "C_Login" && e.Code == pkcs11.CKR_USER_PIN_NOT_INITIALIZED {
		// SoftHSM read a token.object another process was writing when
		// it loaded the token and holds no user PIN for it; the PIN was
		// not looked at.
		return true
	}
	switch e.Code {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_FUNCTION_FAILED:
	default:
		return false
	}
	switch e.Op {
	case "C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList",
		"C_GetMechanismInfo", "C_GetSessionInfo", "C_OpenSession",
		"C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal", "C_GetAttributeValue":
		return true
	case "C_Login":
		return e.Code == pkcs11.CKR_GENERAL_ERROR
	}
	return false
}

// MaxTries bounds how often a transient failure is tried (the first call
// included).
const MaxTries = 10

// Backoff waits before try n (2 ≤ n ≤ MaxTries) of a call that failed
// transiently: a random time up to 5 ms · 2^(n-2), at most 320 ms, so that
// processes that failed together do not try together again. The wait ends
// early, with ctx's error, when ctx does.
func Backoff(ctx context.Context, n int) error {
	ceil := min(5*time.Millisecond<<max(n-2, 0), 320*time.Millisecond)
	t := time.NewTimer(ceil/2 + rand.N(ceil/2+1))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
