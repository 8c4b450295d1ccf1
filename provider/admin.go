package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// InitTokenConfig describes a token to initialise.
type InitTokenConfig struct {
	Module string
	// InitArgs is as in Config.
	InitArgs string
	// Slot to initialise; nil picks the first slot whose token is not
	// initialised yet (SoftHSM always offers one).
	Slot    *uint
	Label   string
	SOPIN   PINSource
	UserPIN PINSource
}

// InitToken initialises a token: sets its label and SO PIN and then the user
// PIN (PKCS#11 v2.40 §5.5, C_InitToken and C_InitPIN). Everything on the token
// is erased. It returns the token as the module now lists it.
//
// This is for provisioning test and development tokens (SoftHSM); real HSMs
// are usually initialised with their vendor's tools.
func InitToken(ctx context.Context, cfg InitTokenConfig) (TokenInfo, error) {
	if cfg.Label == "" || len(cfg.Label) > 32 {
		return TokenInfo{}, fmt.Errorf("%w: token label must be 1 to 32 bytes", ErrInvalidInput)
	}
	if cfg.SOPIN == nil || cfg.UserPIN == nil {
		return TokenInfo{}, fmt.Errorf("%w: token init needs an so pin and a user pin", ErrConfig)
	}
	mod, err := p11.Load(cfg.Module, cfg.InitArgs)
	if err != nil {
		return TokenInfo{}, mapErr(err)
	}
	defer mod.Release()
	var slot uint
	if cfg.Slot != nil {
		slot = *cfg.Slot
	} else {
		free, err := mod.FreeSlots()
		if err != nil {
			return TokenInfo{}, mapErr(err)
		}
		if len(free) == 0 {
			return TokenInfo{}, fmt.Errorf("%w: no slot with an uninitialised token", ErrNotFound)
		}
		slot = free[0]
	}
	so, err := cfg.SOPIN.ReadPIN(ctx, TokenInfo{Slot: slot})
	if err != nil {
		return TokenInfo{}, err
	}
	defer clear(so)
	user, err := cfg.UserPIN.ReadPIN(ctx, TokenInfo{Slot: slot})
	if err != nil {
		return TokenInfo{}, err
	}
	defer clear(user)
	if err := mod.InitToken(slot, so, user, cfg.Label); err != nil {
		return TokenInfo{}, mapErr(err)
	}
	all, err := tokens(mod)
	if err != nil {
		return TokenInfo{}, err
	}
	for _, t := range all {
		if t.Slot == slot {
			return t, nil
		}
	}
	return TokenInfo{Slot: slot, Label: cfg.Label}, nil
}

// Admin manages KEKs. It logs in as the Security Officer to create trusted
// objects (only the SO can set CKA_TRUSTED) and as the user to create and
// see the private halves of RSA KEKs; an application is logged in as one of
// them at a time, so an Admin cannot work while a Provider of the same
// process holds the user login on that token and the SO login is needed
// (close the providers first, or use the hsmkeys command). Each PIN is read
// once, when first needed, and tried once. Admin is safe for concurrent use;
// its operations run one at a time.
type Admin struct {
	mod   *p11.Module
	token TokenInfo
	so    PINSource
	user  PINSource

	mu      sync.Mutex
	closed  bool
	soPIN   []byte
	userPIN []byte
	pinErr  map[bool]error // a refused PIN, by SO-ness, never tried again
}

// OpenAdmin opens the token of cfg for KEK administration. cfg.PIN is the
// user PIN (needed for RSA KEKs, listing and destroying); so is the SO PIN.
// A busy token (a call that failed as SoftHSM's file store fails under
// several processes, and had no effect) is tried again, here and when each
// operation opens its session and logs in, as Open tries it; giving up
// gives ErrTokenBusy. A PIN the token looked at is never tried twice.
func OpenAdmin(ctx context.Context, cfg Config, so PINSource) (*Admin, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if cfg.Module == "" {
		return nil, fmt.Errorf("%w: no module path (set Config.Module or module-path in the uri)", ErrConfig)
	}
	// A busy token is tried again as Open tries it (SoftHSM's file store
	// under several processes: the token missing from the slot list for a
	// moment, C_GetTokenInfo failing with CKR_GENERAL_ERROR), loading the
	// module anew each time, since SoftHSM reads its token directory only
	// in C_Initialize.
	// (Unlike Open, nothing after the token is found can fail here, so no
	// try has seen the token when one fails.)
	var admin *Admin
	err = retryBusy(ctx, newObserver(cfg), func(err error, tries int) error { return openFailed(err, tries, false) }, func(int) error {
		mod, err := p11.Load(cfg.Module, cfg.InitArgs)
		if err != nil {
			return mapErr(err)
		}
		all, err := tokens(mod)
		if err == nil {
			var tok TokenInfo
			if tok, err = selectToken(cfg, mod, all); err == nil {
				admin = &Admin{mod: mod, token: tok, so: so, user: cfg.PIN, pinErr: map[bool]error{}}
				return nil
			}
		}
		mod.Release()
		return err
	})
	if err != nil {
		return nil, err
	}
	return admin, nil
}

// Token is the token this Admin manages.
func (a *Admin) Token() TokenInfo { return a.token }

// Close forgets the PINs and releases the module. It is idempotent.
func (a *Admin) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	clear(a.soPIN)
	clear(a.userPIN)
	return mapErr(a.mod.Release())
}

// session runs fn in a new session logged in as the SO (so) or the user.
func (a *Admin) session(ctx context.Context, so bool, fn func(s *p11.AdminSession) error) error {
	if a.closed {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := a.pinErr[so]; err != nil {
		return err
	}
	pin, src := &a.userPIN, a.user
	userType := uint(pkcs11.CKU_USER)
	if so {
		pin, src, userType = &a.soPIN, a.so, pkcs11.CKU_SO
	}
	if src == nil {
		who := "user"
		if so {
			who = "so"
		}
		return fmt.Errorf("%w: no %s pin source", ErrConfig, who)
	}
	if *pin == nil {
		b, err := src.ReadPIN(ctx, a.token)
		if err != nil {
			return err
		}
		*pin = b
	}
	s, err := a.loggedIn(ctx, userType, *pin)
	if s != nil {
		defer s.Close()
	}
	if err != nil {
		code, _ := p11.CodeOf(err)
		switch {
		case code == pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
			return fmt.Errorf("%w (close providers before kek administration): %w", ErrLoginHeld, withTokenError(err))
		case isPINCode(code):
			pe := &PINError{SO: so, err: withTokenError(err), Locked: code == pkcs11.CKR_PIN_LOCKED}
			if flags, ferr := a.mod.TokenFlags(a.token.Slot); ferr == nil {
				if so {
					pe.CountLow = flags&pkcs11.CKF_SO_PIN_COUNT_LOW != 0
					pe.FinalTry = flags&pkcs11.CKF_SO_PIN_FINAL_TRY != 0
					pe.Locked = pe.Locked || flags&pkcs11.CKF_SO_PIN_LOCKED != 0
				} else {
					pe.CountLow = flags&pkcs11.CKF_USER_PIN_COUNT_LOW != 0
					pe.FinalTry = flags&pkcs11.CKF_USER_PIN_FINAL_TRY != 0
					pe.Locked = pe.Locked || flags&pkcs11.CKF_USER_PIN_LOCKED != 0
				}
			}
			a.pinErr[so] = pe
			return pe
		}
		return mapErr(err)
	}
	return withTokenError(fn(s))
}

// loggedIn opens an admin session and logs in, trying again what failed as
// a busy token's calls do and had no effect (p11.Transient: C_OpenSession,
// or C_Login with CKR_GENERAL_ERROR before the PIN was looked at), as Open
// does. On a login error it returns the open session with the error, for
// the caller to close. Errors are the binding's, for the caller to map.
func (a *Admin) loggedIn(ctx context.Context, userType uint, pin []byte) (*p11.AdminSession, error) {
	var s *p11.AdminSession
	err := retryBusy(ctx, nil, func(err error, tries int) error { return openFailed(err, tries, false) }, func(int) error {
		var err error
		if s, err = a.mod.OpenAdmin(a.token.Slot); err != nil {
			return err
		}
		if err := s.Login(userType, pin); err != nil {
			if p11.Transient(err) { // tried again or given up: either way not the caller's
				s.Close()
				s = nil
			}
			return err
		}
		return nil
	})
	return s, err
}

func isPINCode(code uint) bool {
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		return true
	}
	return false
}

// KEKs lists the KEKs on the token (logged in as the user, so that private
// halves are seen), with their problems.
func (a *Admin) KEKs(ctx context.Context) ([]*KEK, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ks, _, err := a.keks(ctx, "", nil)
	return ks, err
}

// ForeignObjects lists the objects that look like KEK halves, or share a
// KEK's label or ID, but are not KEKs (see ForeignObject). No Admin method
// destroys or uses them; remove them with the token's own tools.
func (a *Admin) ForeignObjects(ctx context.Context) ([]ForeignObject, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, fs, err := a.keks(ctx, "", nil)
	return fs, err
}

func (a *Admin) keks(ctx context.Context, label string, id []byte) ([]*KEK, []ForeignObject, error) {
	var out []*KEK
	var foreign []ForeignObject
	prof := a.Profile()
	err := a.session(ctx, false, func(s *p11.AdminSession) error {
		objs, fs, err := s.FindKEKs(label, id)
		if err != nil {
			return err
		}
		foreign = foreignObjects(fs)
		for _, o := range objs {
			problems, err := s.KEKProblems(o)
			if err != nil {
				return err
			}
			out = append(out, newKEK(o, problems, prof))
		}
		return nil
	})
	if err != nil {
		return nil, nil, mapErr(err)
	}
	sortKEKs(out)
	return out, foreign, nil
}

func validKEKName(name string) error {
	if name == "" || len(name) > 128 || strings.ContainsAny(name, "\x00\n") || isURI(name) { // a "pkcs11:" name would read as a URI
		return fmt.Errorf("%w: kek name %q", ErrInvalidInput, name)
	}
	return nil
}

// nextID returns a CKA_ID for the next version of name. Foreign objects
// with the label do not count.
func (a *Admin) nextID(ctx context.Context, name string) ([]byte, error) {
	if err := validKEKName(name); err != nil {
		return nil, err
	}
	ks, _, err := a.keks(ctx, name, nil)
	if err != nil {
		return nil, err
	}
	v := 0
	for _, k := range ks {
		v = max(v, k.Version)
	}
	id, err := p11.NewKEKID(uint32(v + 1))
	if err != nil {
		return nil, err
	}
	return id, nil
}

// KEKOptions are the administrator's explicit choices when making a KEK.
type KEKOptions struct {
	// AllowExposedAtRest allows an AES KEK on a token whose profile says it
	// stores public objects in clear (SoftHSM, and tokens hsmkeys does not
	// know): the SO can only make public objects, so anyone with a copy of
	// the token's storage and no PIN gets the KEK's value, and with it
	// every key and message wrapped under it. KEK.ExposedAtRest stays true
	// on such a KEK, and 'kek list' and 'doctor' say so.
	AllowExposedAtRest bool
}

// allowKEKType refuses what the token's profile makes unsafe.
func (a *Admin) allowKEKType(t KEKType, opts KEKOptions) error {
	if t != KEKAES128 && t != KEKAES256 {
		return nil
	}
	prof := a.Profile()
	if prof.PublicObjectsProtectedAtRest || opts.AllowExposedAtRest {
		return nil
	}
	return fmt.Errorf("%w: an aes kek on token %s (%s) would be stored in clear at rest: the token does not encrypt public objects and the so can make only public ones, so a copy of its storage gives the kek without any pin; make an rsa kek (%v, the default here), or accept that explicitly (KEKOptions.AllowExposedAtRest, 'hsmkeys kek create --allow-exposed-at-rest')",
		ErrPolicy, a.token, prof.Name, prof.DefaultKEKType())
}

// maxVersionAttempts bounds the retries of a KEK creation that met another
// one making the same version at the same time.
const maxVersionAttempts = 8

// ErrVersionConflict: other administrators kept making the same KEK
// version at the same time; nothing was left on the token.
var ErrVersionConflict = errors.New("kek version taken concurrently")

// createVersion makes the next version of name with mk, which creates
// every object of the KEK with this ID (and removes what it made when it
// fails, or says what it left). Two processes can pick the same version at
// once, and PKCS#11 has no create-if-absent. Processes of one user on one
// host take turns under a lock file (lockKEKNames). Beyond that, after
// making its objects each looks for another KEK of the same name and
// version, and on finding one destroys its own and tries the next version:
// on a token whose view of objects is consistent, of two that clash at
// least the later one sees the other (its objects exist before it looks),
// so two never both keep a version; when both see each other both retry,
// after a random pause that breaks the tie. SoftHSM's view across processes
// lags, which is why the lock is there.
func (a *Admin) createVersion(ctx context.Context, name string, mk func(id []byte) error) (*KEK, error) {
	if testHookVersionChosen != nil {
		testHookVersionChosen()
	}
	// Processes of this user on this host take turns (see lockKEKNames);
	// without the lock the rival check below still runs.
	unlock, err := lockKEKNames(ctx, a.token.Serial)
	if ctx.Err() != nil {
		return nil, err
	}
	defer unlock()
	for attempt := 0; attempt < maxVersionAttempts; attempt++ {
		id, err := a.nextID(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := mk(id); err != nil {
			return nil, err
		}
		ks, _, err := a.keks(ctx, name, nil)
		if err != nil {
			// Unchecked, it might share its version with another: remove it.
			if derr := a.destroyID(context.WithoutCancel(ctx), id); derr != nil {
				return nil, fmt.Errorf("kek %q version %d (id %s) was made, but checking that no one else made that version failed (%w), and removing it failed: %w; remove it with 'hsmkeys kek destroy --label %s --id %s'",
					name, p11.KEKVersion(id), hex.EncodeToString(id), err, derr, name, hex.EncodeToString(id))
			}
			return nil, fmt.Errorf("kek %q: checking that no one else made version %d failed, so it was removed again: %w", name, p11.KEKVersion(id), err)
		}
		var mine *KEK
		rival := false
		for _, k := range ks {
			switch {
			case bytes.Equal(k.ID, id):
				mine = k
			case k.Version == int(p11.KEKVersion(id)):
				rival = true
			}
		}
		if mine == nil {
			return nil, fmt.Errorf("%w: kek with id %s, just made", ErrNotFound, hex.EncodeToString(id))
		}
		if !rival {
			return mine, nil
		}
		if err := a.destroyID(ctx, id); err != nil {
			return nil, fmt.Errorf("kek %q version %d was made at the same time by someone else, and removing ours (id %s) failed: %w; remove it with 'hsmkeys kek destroy --label %s --id %s'",
				name, p11.KEKVersion(id), hex.EncodeToString(id), err, name, hex.EncodeToString(id))
		}
		if err := pause(ctx, attempt); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: kek %q, %d attempts", ErrVersionConflict, name, maxVersionAttempts)
}

// testHookVersionChosen, when set (by a test), runs just before a KEK
// version is chosen.
var testHookVersionChosen func()

// pause waits a random time that grows with attempt, or until ctx ends.
func pause(ctx context.Context, attempt int) error {
	var b [2]byte
	_, _ = rand.Read(b[:])
	d := time.Duration(binary.BigEndian.Uint16(b[:])%1000+1) * time.Duration(1<<min(attempt, 6)) * 20 * time.Microsecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// CreateKEK makes a new KEK named name, or a new version of it, with no
// KEKOptions: on a token that stores public objects in clear an AES type is
// refused (ErrPolicy); see TokenProfile.DefaultKEKType.
func (a *Admin) CreateKEK(ctx context.Context, name string, t KEKType) (*KEK, error) {
	return a.CreateKEKWith(ctx, name, t, KEKOptions{})
}

// CreateKEKWith is CreateKEK with the administrator's explicit choices.
// The version is unique even when other processes create the same name at
// the same time. A creation that fails removes what it made, or its error
// says what is left and how to remove it.
func (a *Admin) CreateKEKWith(ctx context.Context, name string, t KEKType, opts KEKOptions) (*KEK, error) {
	if err := validKEKName(name); err != nil {
		return nil, fmt.Errorf("create kek: %w", err)
	}
	if err := a.allowKEKType(t, opts); err != nil {
		return nil, fmt.Errorf("create kek %q: %w", name, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var mk func(id []byte) error
	switch t {
	case KEKAES128, KEKAES256:
		size := 16
		if t == KEKAES256 {
			size = 32
		}
		mk = func(id []byte) error {
			return a.session(ctx, true, func(s *p11.AdminSession) error {
				_, err := s.GenerateAESKEK(name, id, size)
				return err
			})
		}
	case KEKRSA2048, KEKRSA3072, KEKRSA4096:
		bits := map[KEKType]int{KEKRSA2048: 2048, KEKRSA3072: 3072, KEKRSA4096: 4096}[t]
		mk = func(id []byte) error {
			var modulus, exponent []byte
			err := a.session(ctx, false, func(s *p11.AdminSession) error {
				var err error
				_, modulus, exponent, err = s.GenerateRSAKEKPrivate(name, id, bits)
				return err
			})
			if err != nil {
				return err
			}
			err = a.session(ctx, true, func(s *p11.AdminSession) error {
				_, err := s.CreateTrustedRSAPublic(name, id, modulus, exponent)
				return err
			})
			if err != nil {
				// No half-made KEK left behind, or say so.
				if derr := a.destroyID(context.WithoutCancel(ctx), id); derr != nil {
					return fmt.Errorf("%w; the private half it made (id %s) is still on the token, and removing it failed: %w; remove it with 'hsmkeys kek destroy --label %s --id %s'",
						err, hex.EncodeToString(id), derr, name, hex.EncodeToString(id))
				}
			}
			return err
		}
	default:
		return nil, fmt.Errorf("%w: kek type %v", ErrInvalidInput, t)
	}
	if err := validKEKName(name); err != nil {
		return nil, err
	}
	k, err := a.createVersion(ctx, name, mk)
	if err != nil {
		return nil, fmt.Errorf("create kek %q: %w", name, mapErr(err))
	}
	return k, nil
}

// ImportPublicKEK makes another party's RSA public key a trusted, wrap-only
// KEK named name, for sending session keys to that party.
func (a *Admin) ImportPublicKEK(ctx context.Context, name string, pub *rsa.PublicKey) (*KEK, error) {
	if pub == nil || pub.N == nil || pub.N.BitLen() < 2048 || pub.N.BitLen() > 8192 || pub.E < 3 {
		return nil, fmt.Errorf("import public kek: %w: need an rsa public key of 2048 to 8192 bits", ErrInvalidInput)
	}
	if err := validKEKName(name); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	exp := big.NewInt(int64(pub.E)).Bytes()
	k, err := a.createVersion(ctx, name, func(id []byte) error {
		return a.session(ctx, true, func(s *p11.AdminSession) error {
			_, err := s.CreateTrustedRSAPublic(name, id, pub.N.Bytes(), exp)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("import public kek %q: %w", name, mapErr(err))
	}
	return k, nil
}

// ImportKEK makes an AES KEK named name from a value an administrator
// supplies (a key ceremony, a KEK shared with another site). The file must
// not be readable by group or others, and hold exactly 16 or 32 bytes, raw or
// as hex on one line. Every buffer that held the value is zeroed.
//
// With no KEKOptions it is refused (ErrPolicy) on a token that stores
// public objects in clear; see KEKOptions.AllowExposedAtRest.
func (a *Admin) ImportKEK(ctx context.Context, name string, path string) (*KEK, error) {
	return a.ImportKEKWith(ctx, name, path, KEKOptions{})
}

// ImportKEKWith is ImportKEK with the administrator's explicit choices.
func (a *Admin) ImportKEKWith(ctx context.Context, name string, path string, opts KEKOptions) (*KEK, error) {
	if err := a.allowKEKType(KEKAES256, opts); err != nil {
		return nil, fmt.Errorf("import kek %q: %w", name, err)
	}
	value, err := readSecretFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(value)
	if err := validKEKName(name); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	k, err := a.createVersion(ctx, name, func(id []byte) error {
		return a.session(ctx, true, func(s *p11.AdminSession) error {
			_, err := s.ImportAESKEK(name, id, value)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("import kek %q: %w", name, mapErr(err))
	}
	return k, nil
}

// DestroyKEK destroys the KEK version with this ID (both halves). Keys
// wrapped under it can no longer be imported. Only the KEK's own objects
// are destroyed: a foreign object with the same ID (anyone could have
// planted one) is left alone, and never makes a genuine half go.
func (a *Admin) DestroyKEK(ctx context.Context, id []byte) error {
	if len(id) == 0 {
		return fmt.Errorf("destroy kek: %w: empty id", ErrInvalidInput)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ks, foreign, err := a.keks(ctx, "", id)
	if err != nil {
		return err
	}
	if len(ks) == 0 {
		if len(foreign) > 0 {
			return fmt.Errorf("destroy kek: %w: kek with id %s (%d foreign objects with that id are not hsmkeys keks and are left alone)", ErrNotFound, hex.EncodeToString(id), len(foreign))
		}
		return fmt.Errorf("destroy kek: %w: kek with id %s", ErrNotFound, hex.EncodeToString(id))
	}
	return a.destroyID(ctx, id)
}

// destroyID destroys the objects of the KEK with this CKA_ID: its halves as
// findKEKs accepts them, never a foreign object.
func (a *Admin) destroyID(ctx context.Context, id []byte) error {
	return mapErr(a.session(ctx, false, func(s *p11.AdminSession) error {
		objs, _, err := s.FindKEKs("", id)
		if err != nil {
			return err
		}
		var errs []error
		for _, o := range objs {
			handles := []p11.Object{o.Wrap}
			if o.Unwrap != o.Wrap {
				handles = append(handles, o.Unwrap) // the private half of an rsa kek
			}
			for _, h := range handles {
				if h == 0 {
					continue
				}
				if err := s.Destroy(h); err != nil {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	}))
}
