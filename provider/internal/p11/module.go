// Package p11 is the only place in hsmkeys that talks to a PKCS#11 module.
//
// Every call goes through the binding in ckraw, which loads each module
// once, takes its one function list and initialises it once (one binding per
// module instance: a second C_GetFunctionList through p11-kit's proxy gives
// a second, uninitialised instance). miekg/pkcs11 supplies constants and types
// (Attribute, handles, Error) only. On top of ckraw this package adds a process-wide,
// reference-counted module registry (C_Initialize is process-global,
// PKCS#11 v2.40 §5.4), a bounded session pool that never closes a session
// owning live session objects (PKCS#11 v2.40 §4.4: session objects are
// destroyed when their session closes), and input validation in front of
// every call.
package p11

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// Error is a PKCS#11 return value other than CKR_OK, with the function that
// returned it. It unwraps to the miekg pkcs11.Error carrying the same code.
type Error struct {
	Op   string // PKCS#11 function name, e.g. "C_Encrypt"
	Code uint   // CKR_* value
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (0x%X)", e.Op, CodeName(e.Code), e.Code)
}

// Unwrap lets errors.As find the miekg error type as well.
func (e *Error) Unwrap() error { return pkcs11.Error(e.Code) }

// CodeName returns the CKR_* name of a return value.
func CodeName(code uint) string {
	s := pkcs11.Error(code).Error()
	// miekg formats as "pkcs11: 0x30: CKR_DEVICE_ERROR".
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// wrapErr converts a miekg error into *Error, tagging it with op.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return &Error{Op: op, Code: uint(pe)}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// CodeOf returns the CKR_* code inside err, if any.
func CodeOf(err error) (uint, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Code, true
	}
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return uint(pe), true
	}
	return 0, false
}

// Module is one loaded and initialised PKCS#11 library. Modules are shared:
// Load of the same path returns the same *Module with its count raised, and
// the library is finalised only when the last user releases it.
type Module struct {
	path string
	raw  *ckraw.Module // the one binding: function list, C_Initialize
	ctx  *ckraw.Ctx    // raw seen through miekg's method signatures
	refs int           // guarded by registry.mu
	// initArgs were given to C_Initialize.
	initArgs string
}

var registry = struct {
	sync.Mutex
	m map[string]*Module
}{m: map[string]*Module{}}

// ErrModuleLoad means the library could not be loaded (no such file, the
// loader's refusal, not a PKCS#11 module, a failing C_GetFunctionList). The
// error says why, with the loader's text.
var ErrModuleLoad = ckraw.ErrLoad

// ErrInitArgs: the library is loaded already with other C_Initialize
// arguments.
var ErrInitArgs = ckraw.ErrInitArgs

// Load loads and initialises the module at path, or returns the already
// loaded one. initArgs, when not empty, is passed to C_Initialize as
// pReserved (NSS softoken reads its configuration there; PKCS#11 v2.40
// §5.4, CK_C_INITIALIZE_ARGS). CKR_CRYPTOKI_ALREADY_INITIALIZED is
// tolerated: another part of the process (crypto11, a miekg context) may
// have initialised a singleton module first; it is then never finalised by
// us, since C_Finalize would pull it from under its owner.
func Load(path, initArgs string) (*Module, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no module path given", ErrModuleLoad)
	}
	key := path
	if abs, err := filepath.Abs(path); err == nil {
		key = abs
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			key = real
		}
	}
	registry.Lock()
	defer registry.Unlock()
	if m, ok := registry.m[key]; ok {
		if m.initArgs != initArgs {
			return nil, fmt.Errorf("%w: %s", ErrInitArgs, path)
		}
		m.refs++
		return m, nil
	}
	raw, err := ckraw.Open(key, ckraw.Options{InitArgs: initArgs})
	if err != nil {
		if ckraw.IsInitError(err) {
			return nil, wrapErr("C_Initialize", err)
		}
		return nil, err
	}
	m := &Module{path: key, raw: raw, ctx: raw.Ctx(), refs: 1, initArgs: initArgs}
	registry.m[key] = m
	return m, nil
}

// Path is the resolved file name of the library.
func (m *Module) Path() string { return m.path }

// Release drops one reference; the last one finalises and unloads the library.
func (m *Module) Release() error {
	registry.Lock()
	defer registry.Unlock()
	if m.refs <= 0 {
		return nil
	}
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(registry.m, m.path)
	// ckraw finalises (if ours) and unloads when this was the last user.
	return m.raw.Close()
}

// TokenInfo describes one token present in a slot.
type TokenInfo struct {
	Slot         uint
	Label        string
	Serial       string
	Model        string
	Manufacturer string
	Flags        uint
	Initialized  bool // CKF_TOKEN_INITIALIZED
	// From C_GetSlotInfo (PKCS#11 v2.40 §5.5); empty if the module does
	// not answer it.
	SlotDescription, SlotManufacturer string
}

// LibraryInfo is what C_GetInfo (PKCS#11 v2.40 §5.4, CK_INFO) says of the
// module: the library-* attributes of an RFC 7512 URI match it, and
// "hsmkeys version" prints it.
type LibraryInfo struct {
	Manufacturer, Description    string
	Major, Minor                 byte // libraryVersion
	CryptokiMajor, CryptokiMinor byte // cryptokiVersion
}

// Info calls C_GetInfo.
func (m *Module) Info() (LibraryInfo, error) {
	in, err := m.ctx.GetInfo()
	if err != nil {
		return LibraryInfo{}, wrapErr("C_GetInfo", err)
	}
	return LibraryInfo{Manufacturer: in.ManufacturerID, Description: in.LibraryDescription,
		Major: in.LibraryVersion.Major, Minor: in.LibraryVersion.Minor,
		CryptokiMajor: in.CryptokiVersion.Major, CryptokiMinor: in.CryptokiVersion.Minor}, nil
}

// Tokens lists the tokens present in the module's slots.
func (m *Module) Tokens() ([]TokenInfo, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return nil, wrapErr("C_GetSlotList", err)
	}
	out := make([]TokenInfo, 0, len(slots))
	for _, s := range slots {
		ti, err := m.ctx.GetTokenInfo(s)
		if err != nil {
			if code, _ := CodeOf(err); code == pkcs11.CKR_TOKEN_NOT_PRESENT {
				continue // removed between the two calls
			}
			return nil, wrapErr("C_GetTokenInfo", err)
		}
		// Slot text is only matched against URIs; a module that cannot give
		// it leaves it empty, so a URI naming it selects no token there.
		si, _ := m.ctx.GetSlotInfo(s)
		out = append(out, TokenInfo{
			SlotDescription:  si.SlotDescription,
			SlotManufacturer: si.ManufacturerID,
			Slot:             s,
			Label:            strings.TrimRight(ti.Label, " \x00"),
			Serial:           strings.TrimRight(ti.SerialNumber, " \x00"),
			Model:            strings.TrimRight(ti.Model, " \x00"),
			Manufacturer:     strings.TrimRight(ti.ManufacturerID, " \x00"),
			Flags:            ti.Flags,
			Initialized:      ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0,
		})
	}
	return out, nil
}

// TokenFlags reads the current flags of the token in slot (used after a
// failed login, to report retry and lock state).
func (m *Module) TokenFlags(slot uint) (uint, error) {
	ti, err := m.ctx.GetTokenInfo(slot)
	if err != nil {
		return 0, wrapErr("C_GetTokenInfo", err)
	}
	return ti.Flags, nil
}

// Mechanisms lists the mechanism types the token in slot offers.
func (m *Module) Mechanisms(slot uint) ([]uint, error) {
	ms, err := m.ctx.GetMechanismList(slot)
	if err != nil {
		return nil, wrapErr("C_GetMechanismList", err)
	}
	out := make([]uint, len(ms))
	for i, mech := range ms {
		out[i] = mech.Mechanism
	}
	return out, nil
}

// InitToken initialises the token in slot with an SO PIN and a label
// (PKCS#11 v2.40 §5.5 C_InitToken), then sets the user PIN through an SO
// session (§5.6 C_InitPIN). Everything on the token is lost.
func (m *Module) InitToken(slot uint, soPIN, userPIN []byte, label string) error {
	if len(soPIN) == 0 || len(userPIN) == 0 || label == "" || len(label) > 32 {
		return fmt.Errorf("%w: token init needs both pins and a label of 1 to 32 bytes", ErrInput)
	}
	padded := label + strings.Repeat(" ", 32-len(label))
	if err := m.ctx.InitToken(slot, string(soPIN), padded); err != nil {
		return wrapErr("C_InitToken", err)
	}
	h, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return wrapErr("C_OpenSession", err)
	}
	defer m.ctx.CloseSession(h)
	if err := m.ctx.Login(h, pkcs11.CKU_SO, string(soPIN)); err != nil {
		return wrapErr("C_Login", err)
	}
	defer m.ctx.Logout(h)
	return wrapErr("C_InitPIN", m.ctx.InitPIN(h, string(userPIN)))
}

// FreeSlots lists slots whose token is present but not initialised.
func (m *Module) FreeSlots() ([]uint, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return nil, wrapErr("C_GetSlotList", err)
	}
	var out []uint
	for _, s := range slots {
		ti, err := m.ctx.GetTokenInfo(s)
		if err == nil && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			out = append(out, s)
		}
	}
	return out, nil
}
