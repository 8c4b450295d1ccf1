package p11

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// KCV computes the key check value of an AES key on the token: the first
// three bytes of AES-ECB of a zero block (the customary KCV; SoftHSM leaves
// CKA_CHECK_VALUE empty on unwrapped keys, TOKEN-FACTS).
func (p *Pool) KCV(s *Session, key Object) ([]byte, error) {
	m := []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_ECB, nil)}
	if err := p.ctx().EncryptInit(s.h, m, pkcs11.ObjectHandle(key)); err != nil {
		return nil, wrapErr("C_EncryptInit", err)
	}
	out, err := p.mod.raw.Encrypt(uint(s.h), make([]byte, 16), 16)
	if err != nil {
		return nil, wrapErr("C_Encrypt", err)
	}
	if len(out) < 3 {
		return nil, fmt.Errorf("token returned %d bytes for one aes block", len(out))
	}
	return out[:3], nil
}

// EncryptStream is a multi-part encryption in progress on one session
// (PKCS#11 v2.40 §5.8, C_EncryptUpdate/C_EncryptFinal). The session may do
// nothing else until Final or Abort.
type EncryptStream struct {
	p       *Pool
	s       *Session
	params  *ckraw.GCMParams
	done    bool
	nonce   []byte // the caller's nonce buffer, given the token's IV (GCM)
	scratch []byte // UpdateReuse's output
}

// GCMEncrypt starts AES-GCM encryption under key with this nonce and AAD.
// It is used for new messages and, with a message's own nonce, to recompute
// the tag of a decrypted message (see CTRDecrypt). On a token that writes
// its own IV into the parameters (Profile.GCMIV) nonce is overwritten with
// it when GCMEncrypt returns; a token whose profile does not stream GCM
// (Profile.StreamsGCM) is refused with ErrNoStreaming.
func (p *Pool) GCMEncrypt(s *Session, key Object, nonce, aad []byte) (*EncryptStream, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrInput, len(nonce))
	}
	prof := p.profile()
	if prof.GCMIV == IVUnsupported {
		return nil, fmt.Errorf("%w: the token returns its gcm iv in a layout hsmkeys does not take", ErrTokenIV)
	}
	if !prof.StreamsGCM() {
		return nil, ErrNoStreaming
	}
	mech, params := gcmMech(nonce, aad)
	if err := p.ctx().EncryptInit(s.h, mech, pkcs11.ObjectHandle(key)); err != nil {
		params.Free()
		return nil, wrapErr("C_EncryptInit", err)
	}
	if _, err := takeIV(prof, params, nonce, nil, false); err != nil {
		_, _ = p.ctx().EncryptFinal(s.h)
		params.Free()
		return nil, err
	}
	return &EncryptStream{p: p, s: s, params: params, nonce: nonce}, nil
}

// ErrNoStreaming: the token cannot stream a GCM encryption (no multi-part
// GCM, or its IV comes only with the last part); encrypt in one call.
var ErrNoStreaming = errors.New("token cannot stream aes-gcm encryption")

// Update encrypts one part; SoftHSM returns as many bytes as it is given.
func (e *EncryptStream) Update(in []byte) ([]byte, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out, err := e.p.ctx().EncryptUpdateCap(e.s.h, in, updateCap(len(in)))
	if err != nil {
		e.finish()
	}
	return out, wrapErr("C_EncryptUpdate", err)
}

// UpdateReuse is Update writing into a buffer the stream keeps: the result
// is valid until the next call on e. For callers that hand each part on
// (to a writer that does not keep it, per io.Writer) before the next.
func (e *EncryptStream) UpdateReuse(in []byte) ([]byte, error) {
	if len(in) == 0 {
		return nil, nil
	}
	want := updateCap(len(in))
	if cap(e.scratch) < want {
		e.scratch = make([]byte, want)
	}
	out, err := e.p.ctx().EncryptUpdateIn(e.s.h, in, e.scratch[:want])
	if err != nil {
		e.finish()
	}
	return out, wrapErr("C_EncryptUpdate", err)
}

// Final ends the operation and returns what is left: the GCM tag (and any
// buffered ciphertext before it).
func (e *EncryptStream) Final() ([]byte, error) {
	out, err := e.p.ctx().EncryptFinalCap(e.s.h, finalCap)
	e.finish()
	return out, wrapErr("C_EncryptFinal", err)
}

// Abort ends an unfinished operation so the session can be reused.
func (e *EncryptStream) Abort() {
	if e.done {
		return
	}
	// PKCS#11 v2.40 has no C_EncryptCancel; finishing is the portable way
	// to end the operation (v3.0 §5.2 allows a NULL-buffer init too).
	_, _ = e.p.ctx().EncryptFinalCap(e.s.h, finalCap)
	e.finish()
}

// updateCap is the output buffer of one C_EncryptUpdate of n bytes, so
// that one call is enough: AES-GCM and AES-CTR give back what they are
// given (SoftHSM) or, from a token that holds back part of a block, at
// most one block more. Parts of whole blocks get exactly n (a 32 KiB
// buffer, not one of the next size class, which would add a quarter to
// the garbage of every stream); a token that answers CKR_BUFFER_TOO_SMALL
// gets the size it asks for in a second call (PKCS#11 v2.40 base §5.2).
func updateCap(n int) int {
	if n%16 == 0 {
		return n
	}
	return n + 16
}

// finalCap is room for what C_EncryptFinal returns for AES-GCM (a block
// held back and the tag) or AES-CTR (nothing), in one call.
const finalCap = 32

func (e *EncryptStream) finish() {
	if !e.done {
		e.done = true
		if e.params != nil {
			e.params.Free()
		}
	}
}

// CTR starts AES-CTR over a GCM ciphertext, which gives its plaintext:
// the keystream of GCM's CTR mode starts at inc32(J0) = nonce || 0x00000002
// for a 96-bit nonce (NIST SP 800-38D §7.1), with a 32-bit counter (PKCS#11
// v2.40 mechanisms §2.11, CK_AES_CTR_PARAMS). It runs as an encryption (CTR
// is its own inverse) because SoftHSM 2.6.1 keeps every part of a
// multi-part C_DecryptUpdate in memory until C_DecryptFinal, CTR included
// (measured: 64 MiB in, 150 MB resident), while C_EncryptUpdate streams.
func (p *Pool) CTR(s *Session, key Object, nonce []byte) (*EncryptStream, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrInput, len(nonce))
	}
	// CK_AES_CTR_PARAMS { CK_ULONG ulCounterBits; CK_BYTE cb[16]; }
	params := make([]byte, 8+16)
	binary.NativeEndian.PutUint64(params, 32)
	copy(params[8:], nonce)
	binary.BigEndian.PutUint32(params[8+12:], 2)
	m := []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_CTR, params)}
	if err := p.ctx().EncryptInit(s.h, m, pkcs11.ObjectHandle(key)); err != nil {
		return nil, wrapErr("C_EncryptInit", err)
	}
	return &EncryptStream{p: p, s: s}, nil
}
