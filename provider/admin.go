package provider

import (
	"context"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"

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
func OpenAdmin(ctx context.Context, cfg Config, so PINSource) (*Admin, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if cfg.Module == "" {
		return nil, fmt.Errorf("%w: no module path (set Config.Module or module-path in the uri)", ErrConfig)
	}
	mod, err := p11.Load(cfg.Module, cfg.InitArgs)
	if err != nil {
		return nil, mapErr(err)
	}
	all, err := tokens(mod)
	if err == nil {
		var tok TokenInfo
		if tok, err = selectToken(cfg, all); err == nil {
			return &Admin{mod: mod, token: tok, so: so, user: cfg.PIN, pinErr: map[bool]error{}}, nil
		}
	}
	mod.Release()
	return nil, err
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
	s, err := a.mod.OpenAdmin(a.token.Slot)
	if err != nil {
		return mapErr(err)
	}
	defer s.Close()
	if err := s.Login(userType, *pin); err != nil {
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
	return a.keks(ctx, "", nil)
}

func (a *Admin) keks(ctx context.Context, label string, id []byte) ([]*KEK, error) {
	var out []*KEK
	err := a.session(ctx, false, func(s *p11.AdminSession) error {
		objs, err := s.FindKEKs(label, id)
		if err != nil {
			return err
		}
		for _, o := range objs {
			problems, err := s.KEKProblems(o)
			if err != nil {
				return err
			}
			out = append(out, newKEK(o, problems))
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	sortKEKs(out)
	return out, nil
}

// nextID returns a CKA_ID for the next version of name.
func (a *Admin) nextID(ctx context.Context, name string) ([]byte, error) {
	if name == "" || len(name) > 128 || strings.ContainsAny(name, "\x00\n") {
		return nil, fmt.Errorf("%w: kek name %q", ErrInvalidInput, name)
	}
	ks, err := a.keks(ctx, name, nil)
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

// CreateKEK makes a new KEK named name, or a new version of it.
func (a *Admin) CreateKEK(ctx context.Context, name string, t KEKType) (*KEK, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, err := a.nextID(ctx, name)
	if err != nil {
		return nil, err
	}
	switch t {
	case KEKAES128, KEKAES256:
		size := 16
		if t == KEKAES256 {
			size = 32
		}
		err = a.session(ctx, true, func(s *p11.AdminSession) error {
			_, err := s.GenerateAESKEK(name, id, size)
			return err
		})
	case KEKRSA2048, KEKRSA3072, KEKRSA4096:
		bits := map[KEKType]int{KEKRSA2048: 2048, KEKRSA3072: 3072, KEKRSA4096: 4096}[t]
		var modulus, exponent []byte
		err = a.session(ctx, false, func(s *p11.AdminSession) error {
			var err error
			_, modulus, exponent, err = s.GenerateRSAKEKPrivate(name, id, bits)
			return err
		})
		if err == nil {
			err = a.session(ctx, true, func(s *p11.AdminSession) error {
				_, err := s.CreateTrustedRSAPublic(name, id, modulus, exponent)
				return err
			})
			if err != nil {
				a.destroyID(ctx, id) // no half-made KEK left behind
			}
		}
	default:
		return nil, fmt.Errorf("%w: kek type %v", ErrInvalidInput, t)
	}
	if err != nil {
		return nil, fmt.Errorf("create kek %q: %w", name, mapErr(err))
	}
	return a.byID(ctx, id)
}

// ImportPublicKEK makes another party's RSA public key a trusted, wrap-only
// KEK named name, for sending session keys to that party.
func (a *Admin) ImportPublicKEK(ctx context.Context, name string, pub *rsa.PublicKey) (*KEK, error) {
	if pub == nil || pub.N == nil || pub.N.BitLen() < 2048 || pub.N.BitLen() > 8192 || pub.E < 3 {
		return nil, fmt.Errorf("import public kek: %w: need an rsa public key of 2048 to 8192 bits", ErrInvalidInput)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id, err := a.nextID(ctx, name)
	if err != nil {
		return nil, err
	}
	exp := big.NewInt(int64(pub.E)).Bytes()
	err = a.session(ctx, true, func(s *p11.AdminSession) error {
		_, err := s.CreateTrustedRSAPublic(name, id, pub.N.Bytes(), exp)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("import public kek %q: %w", name, mapErr(err))
	}
	return a.byID(ctx, id)
}

// ImportKEK makes an AES KEK named name from a value an administrator
// supplies (a key ceremony, a KEK shared with another site). The file must
// not be readable by group or others, and hold exactly 16 or 32 bytes, raw or
// as hex on one line. Every buffer that held the value is zeroed.
func (a *Admin) ImportKEK(ctx context.Context, name string, path string) (*KEK, error) {
	value, err := readSecretFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(value)
	a.mu.Lock()
	defer a.mu.Unlock()
	id, err := a.nextID(ctx, name)
	if err != nil {
		return nil, err
	}
	err = a.session(ctx, true, func(s *p11.AdminSession) error {
		_, err := s.ImportAESKEK(name, id, value)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("import kek %q: %w", name, mapErr(err))
	}
	return a.byID(ctx, id)
}

func (a *Admin) byID(ctx context.Context, id []byte) (*KEK, error) {
	ks, err := a.keks(ctx, "", id)
	if err != nil {
		return nil, err
	}
	if len(ks) != 1 {
		return nil, fmt.Errorf("%w: kek with id %s", ErrNotFound, hex.EncodeToString(id))
	}
	return ks[0], nil
}

// DestroyKEK destroys the KEK version with this ID (both halves). Keys
// wrapped under it can no longer be imported.
func (a *Admin) DestroyKEK(ctx context.Context, id []byte) error {
	if len(id) == 0 {
		return fmt.Errorf("destroy kek: %w: empty id", ErrInvalidInput)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ks, err := a.keks(ctx, "", id)
	if err != nil {
		return err
	}
	if len(ks) == 0 {
		return fmt.Errorf("destroy kek: %w: kek with id %s", ErrNotFound, hex.EncodeToString(id))
	}
	return a.destroyID(ctx, id)
}

// destroyID destroys every object with this CKA_ID that is a KEK half.
func (a *Admin) destroyID(ctx context.Context, id []byte) error {
	return mapErr(a.session(ctx, false, func(s *p11.AdminSession) error {
		objs, err := s.FindKEKs("", id)
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
