package provider

// Exported keys: a CMS AuthEnvelopedData whose content-encryption key is the
// session key itself, wrapped for each KEK, and whose content is a manifest
// encrypted under the key on the token. docs/format.md is the reference.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/subtle"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// ErrMalformed: the input is not a well-formed CMS message of ours:
// truncated, bad DER, trailing data.
var ErrMalformed = errors.New("malformed cms message")

// ErrContext: the encryption context given does not match the one the
// message was made with.
var ErrContext = errors.New("encryption context does not match")

// MaxBlobSize bounds an exported key (a few recipients, a small manifest).
const MaxBlobSize = 1 << 20

// Options are the optional parts of the calls that write or read CMS.
// One Options value may serve a write and the read of what it wrote:
//
//   - Export, Encrypt, NewEncrypter: Context is bound to the output; Armor
//     writes PEM.
//   - Import, Decrypt, InspectKey: Context must equal the input's. Armor is
//     not used: these read DER, BER or PEM, whichever the input is.
//   - Rewrap: Context must equal the input's (and stays bound to the
//     output); the output is PEM when Armor is set or the input was PEM.
type Options struct {
	// Context is an encryption context: key/value pairs bound to the message
	// as authenticated attributes (in the spirit of a cloud KMS encryption
	// context). Decryption and import must be given the same context.
	Context map[string]string
	// Armor makes Export, Rewrap, Encrypt and NewEncrypter write PEM
	// ("-----BEGIN CMS-----") instead of DER. Calls that only read ignore
	// it: they recognise PEM by itself.
	Armor bool
}

// KindError reports input of another kind than the call takes: an
// encrypted message given to Import or Rewrap, an exported key given to
// Decrypt, or a CMS message of another content type (signed data, say)
// given to any of them. It matches ErrWrongKind.
type KindError struct {
	// Kind is what the input is: "message" (an encrypted message), "key"
	// (an exported key), or a description of another kind of CMS.
	Kind string
	// Want is what the call takes: "message", "key", or "" for either.
	Want string
}

func (e *KindError) Error() string {
	var what string
	switch e.Kind {
	case "message":
		what = "this is an encrypted message, not an exported key; use decrypt"
	case "key":
		what = "this is an exported key, not an encrypted message; use import"
	default:
		what = fmt.Sprintf("this is %s, not an hsmkeys message or exported key", e.Kind)
	}
	return fmt.Sprintf("%v: %s", ErrWrongKind, what)
}

func (e *KindError) Is(target error) bool { return target == ErrWrongKind }

// mapCMS gives cms errors the provider's sentinels.
func mapCMS(err error) error {
	var cte *cms.ContentTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &cte):
		return &KindError{Kind: cmsKind(cte)}
	case errors.Is(err, cms.ErrUnsupported):
		return unsupportedMessage{err}
	case errors.Is(err, cms.ErrMalformed):
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return err
}

// unsupportedMessage is a message using a feature or a size hsmkeys does
// not handle (an algorithm, unauthAttrs, more than 64 recipients or
// attributes). It matches ErrUnsupported, but its text does not blame the
// token as ErrUnsupported's does: the cms error says what it is.
type unsupportedMessage struct{ err error }

func (e unsupportedMessage) Error() string        { return e.err.Error() }
func (e unsupportedMessage) Unwrap() error        { return e.err }
func (e unsupportedMessage) Is(target error) bool { return target == ErrUnsupported }

// cmsKind describes a CMS content type other than ours for a KindError.
func cmsKind(e *cms.ContentTypeError) string {
	if e.Name == e.OID {
		return fmt.Sprintf("a cms message of content type %s", e.OID)
	}
	return fmt.Sprintf("a cms %s message (content type %s)", e.Name, e.OID)
}

// kindOf says what a header alone tells of a message: "message", "key", or
// another kind of AuthEnvelopedData for a KindError. An id-data message
// can still be an exported key (a version 2 manifest, see Export): that is
// known only once it authenticates.
func kindOf(h *cms.Header) string {
	switch {
	case h.ContentType.Equal(cms.OIDKeyManifest):
		return "key"
	case h.ContentType.Equal(cms.OIDData):
		return "message"
	}
	return fmt.Sprintf("an authEnvelopedData of content type %v", h.ContentType)
}

func gcmOID(alg Algorithm) asn1.ObjectIdentifier {
	if alg == AES128 {
		return cms.OIDAES128GCM
	}
	return cms.OIDAES256GCM
}

func algFromOID(oid asn1.ObjectIdentifier) (Algorithm, error) {
	switch {
	case oid.Equal(cms.OIDAES128GCM):
		return AES128, nil
	case oid.Equal(cms.OIDAES256GCM):
		return AES256, nil
	}
	return 0, fmt.Errorf("%w: content encryption algorithm %v", ErrUnsupported, oid)
}

// authAttrs builds the authenticated attributes: content type, and the
// encryption context when there is one.
func authAttrs(contentType cms.Attribute, ectx map[string]string, force bool) ([]cms.Attribute, error) {
	if len(ectx) == 0 && !force {
		return nil, nil
	}
	attrs := []cms.Attribute{contentType}
	if len(ectx) > 0 {
		a, err := cms.EncryptionContextAttr(ectx)
		if err != nil {
			return nil, fmt.Errorf("%w: encryption context: %w", ErrInvalidInput, err)
		}
		attrs = append(attrs, a)
	}
	return attrs, nil
}

// checkContext compares the context in h with the one the caller gave.
func checkContext(h *cms.Header, want map[string]string) error {
	got, err := h.EncryptionContext()
	if err != nil {
		return mapCMS(err)
	}
	if !maps.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		return fmt.Errorf("%w: the message was made with %d context entries (%s), %d were given",
			ErrContext, len(got), strings.Join(sortedKeys(got), ", "), len(want))
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// recipientFor wraps the key object under kek and describes the result as a
// CMS recipient.
func (p *Provider) recipientFor(s *p11.Session, obj p11.Object, alg Algorithm, kek *KEK) (cms.Recipient, error) {
	w, err := p.wrapOn(s, obj, alg, kek)
	if err != nil {
		return nil, err
	}
	switch w.Mechanism {
	case AESKeyWrap:
		oid := cms.OIDAES256Wrap
		if kek.Bits == 128 {
			oid = cms.OIDAES128Wrap
		}
		return &cms.KEKRecipient{KeyID: bytes.Clone(kek.ID), WrapAlg: oid, EncryptedKey: w.Bytes}, nil
	case RSAOAEPSHA1, RSAOAEPSHA256:
		h := crypto.SHA1
		if w.Mechanism == RSAOAEPSHA256 {
			h = crypto.SHA256
		}
		return &cms.KeyTransRecipient{SubjectKeyID: cms.SubjectKeyID(kek.PublicKey()), Hash: h, EncryptedKey: w.Bytes}, nil
	}
	return nil, fmt.Errorf("%w: wrap mechanism %v", ErrUnsupported, w.Mechanism)
}

func checkKEKs(to []*KEK) error {
	if len(to) == 0 {
		return fmt.Errorf("%w: no kek to wrap for", ErrInvalidInput)
	}
	if len(to) > 64 {
		return fmt.Errorf("%w: %d keks; at most 64", ErrInvalidInput, len(to))
	}
	for _, k := range to {
		if k == nil {
			return fmt.Errorf("%w: nil kek", ErrInvalidInput)
		}
		if err := k.usable(); err != nil {
			return err
		}
	}
	return nil
}

// Export wraps the session key k for every KEK in to and returns it as a CMS
// AuthEnvelopedData (DER, or PEM with o.Armor) whose content is the key's
// manifest, encrypted under k on the token. The key never leaves the token
// unwrapped; the token itself refuses unless k is exportable and each KEK
// is trusted.
//
// The content type is id-data and the manifest names its own type, so that
// without a context the blob has no authAttrs and opens in any OpenSSL 3
// (before 3.0.22 OpenSSL cannot parse authAttrs: openssl#26101); RFC 5083
// §2.1 requires authAttrs for any other content type. Keys exported before
// (content type OIDKeyManifest, with authAttrs) still import.
func (p *Provider) Export(ctx context.Context, k *Key, to []*KEK, o Options) ([]byte, error) {
	if err := checkKEKs(to); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if k != nil && !k.exportable {
		return nil, fmt.Errorf("export: %w: %v was generated under export policy none", ErrPolicy, k)
	}
	var der []byte
	err := k.use(ctx, "export", func(s *p11.Session) error {
		kcv, err := p.keyCheckValue(s, k)
		if err != nil {
			return err
		}
		manifest, err := cms.MarshalManifest(&cms.Manifest{ // version 2: names its type
			Version: cms.ManifestVersion, KeyAlg: k.alg.String(), KeyBits: k.alg.bytes() * 8,
			KCV: kcv, Created: k.created, Policy: cms.PolicyTrusted, KeyID: k.id[:],
		})
		if err != nil {
			return err
		}
		h := &cms.Header{ContentType: cms.OIDData, Algorithm: gcmOID(k.alg), Nonce: make([]byte, p11.NonceSize)}
		if h.AuthAttrs, err = authAttrs(cms.ContentTypeAttr(cms.OIDData), o.Context, false); err != nil {
			return err
		}
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			h.Recipients = append(h.Recipients, r)
		}
		if _, err := rand.Read(h.Nonce); err != nil {
			return err
		}
		if k.seals.Add(1) > p.cfg.MaxSealsPerKey {
			return ErrKeyExhausted
		}
		sealed, err := p.pool.SealGCM(s, k.obj, h.Nonce, h.AAD(), manifest)
		if err != nil {
			return err
		}
		body, mac := sealed[:len(sealed)-p11.TagSize], sealed[len(sealed)-p11.TagSize:]
		der, err = cms.Marshal(h, body, mac)
		return err
	})
	if err != nil {
		return nil, mapCMS(err)
	}
	if o.Armor {
		return cms.Armor(der), nil
	}
	return der, nil
}

// parseBlob accepts DER or PEM.
func parseBlob(blob []byte) (*cms.Message, error) {
	if len(blob) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrMalformed)
	}
	if len(blob) > MaxBlobSize {
		return nil, fmt.Errorf("%w: %d bytes is larger than an exported key can be", ErrMalformed, len(blob))
	}
	if cms.IsArmored(blob) {
		der, ok := cms.Unarmor(blob)
		if !ok {
			return nil, fmt.Errorf("%w: bad pem armour", ErrMalformed)
		}
		blob = der
	}
	m, err := cms.Parse(bytes.NewReader(blob), int64(len(blob)))
	return m, mapCMS(err)
}

// unwrapRecipient unwraps the content-encryption key of h under a recipient
// whose KEK this token holds, trying each in the order of the message.
// RFC 5652 §6.1 lets a message carry recipients a reader cannot use, in any
// order, so a recipient that names no KEK here (not found, an identifier no
// KEK of ours can have, a KEK without its unwrapping half) or whose KEK
// fails it (ambiguous, refused by policy, a failed unwrap) does not stop
// the search; openssl searches the same way. Errors of the token or the
// context do. None usable gives the error of the first recipient that
// failed, or ErrNotFound naming the identifiers in the message.
func (p *Provider) unwrapRecipient(ctx context.Context, h *cms.Header, alg Algorithm) (*Key, *KEK, error) {
	var ids []string
	var first error
	skis := &skiIndex{p: p}
	for i, r := range h.Recipients {
		k, kek, id, err := p.tryRecipient(ctx, r, alg, skis)
		if err == nil {
			return k, kek, nil
		}
		if id != "" {
			ids = append(ids, id)
		}
		if !recipientSkippable(err) {
			return nil, nil, err
		}
		if first == nil && !errors.Is(err, ErrNotFound) {
			first = err
			if len(h.Recipients) > 1 {
				first = fmt.Errorf("recipient %d of %d (%s): %w", i+1, len(h.Recipients), id, err)
			}
		}
	}
	if first != nil {
		return nil, nil, first
	}
	return nil, nil, fmt.Errorf("%w: no kek on token %q for any recipient (%s)", ErrNotFound, p.token.Label, strings.Join(ids, ", "))
}

// recipientSkippable reports whether err, from trying one recipient, is
// about that recipient only, so that the next one may still work.
func recipientSkippable(err error) bool {
	for _, s := range []error{ErrNotFound, ErrInvalidInput, ErrPolicy, ErrWrappedKeyInvalid, ErrUnsupported} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// tryRecipient unwraps under one recipient. id names the recipient for an
// error message; it is empty for a recipient hsmkeys cannot use at all.
func (p *Provider) tryRecipient(ctx context.Context, r cms.Recipient, alg Algorithm, skis *skiIndex) (k *Key, kek *KEK, id string, err error) {
	w := &WrappedKey{Algorithm: alg}
	switch r := r.(type) {
	case *cms.KEKRecipient:
		id = "kek id " + shortHex(r.KeyID)
		switch {
		case r.WrapAlg.Equal(cms.OIDAES128Wrap), r.WrapAlg.Equal(cms.OIDAES192Wrap), r.WrapAlg.Equal(cms.OIDAES256Wrap):
			w.Mechanism = AESKeyWrap
		default:
			w.Mechanism = AESKeyWrapPad
		}
		w.KEKID, w.Bytes = r.KeyID, r.EncryptedKey
		kek, err = p.KEKByID(ctx, r.KeyID)
		if errors.Is(err, ErrInvalidInput) {
			// An identifier no KEK can have (KEKByID takes up to 256
			// bytes, RFC 5652 sets no bound) names no KEK here.
			err = fmt.Errorf("%w: no kek has an id of %d bytes", ErrNotFound, len(r.KeyID))
		}
	case *cms.KeyTransRecipient:
		id = "subject key id " + shortHex(r.SubjectKeyID)
		w.Mechanism = RSAOAEPSHA1
		if r.Hash == crypto.SHA256 {
			w.Mechanism = RSAOAEPSHA256
		}
		w.Bytes = r.EncryptedKey
		kek, err = skis.find(ctx, r.SubjectKeyID)
		if kek != nil {
			w.KEKID = kek.ID
		}
	default:
		return nil, nil, "", fmt.Errorf("%w: a recipient hsmkeys does not use", ErrNotFound)
	}
	if err != nil {
		return nil, nil, id, err
	}
	if !kek.CanUnwrap() {
		return nil, nil, id, fmt.Errorf("%w: %v has no unwrapping half on this token", ErrNotFound, kek)
	}
	if err := validWrapped(w); err != nil {
		return nil, nil, id, err
	}
	k, err = p.unwrapUnder(ctx, w, kek)
	return k, kek, id, err
}

// shortHex formats an identifier from a message for an error, cut short:
// a message may carry 64 recipients with 1 KiB identifiers.
func shortHex(b []byte) string {
	if len(b) > 32 {
		return fmt.Sprintf("%s... (%d bytes)", hex.EncodeToString(b[:32]), len(b))
	}
	return hex.EncodeToString(b)
}

// skiIndex finds RSA KEKs by subject key identifier during one recipient
// search. The token's KEKs are listed at most once per search, not once
// per recipient: a message may name 64 RSA keys that are not here.
type skiIndex struct {
	p      *Provider
	listed bool
	keks   []*KEK
	skis   [][]byte
}

// find returns the RSA KEK whose subject key identifier is ski.
func (x *skiIndex) find(ctx context.Context, ski []byte) (*KEK, error) {
	key := append([]byte("ski:"), ski...)
	if k := x.p.keks.get(key); k != nil {
		return k, nil
	}
	if !x.listed {
		ks, err := x.p.KEKs(ctx)
		if err != nil {
			return nil, err
		}
		for _, k := range ks {
			if pub := k.PublicKey(); pub != nil {
				x.keks = append(x.keks, k)
				x.skis = append(x.skis, cms.SubjectKeyID(pub))
			}
		}
		x.listed = true
	}
	for i, s := range x.skis {
		if bytes.Equal(s, ski) {
			k := x.keks[i]
			if err := k.usable(); err != nil {
				return nil, err
			}
			x.p.keks.put(k)
			x.p.keks.putAs(key, k)
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: no rsa kek with that public key", ErrNotFound)
}

// Import brings an exported key back into the token as a session key. It
// checks, in order: the CMS structure, that it is an exported key, the
// encryption context, the recipient (the KEK is found by the identifier in
// the blob), the unwrap, the manifest's GCM tag under the unwrapped key, and
// the manifest against the key (algorithm, length, check value). A blob
// edited anywhere, or a wrapped key spliced in from another blob, fails.
// The blob may be DER or PEM; o.Armor is not used.
func (p *Provider) Import(ctx context.Context, blob []byte, o Options) (*Key, error) {
	m, err := parseBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	k, err := p.importMessage(ctx, m, o)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return k, nil
}

func (p *Provider) importMessage(ctx context.Context, m *cms.Message, o Options) (*Key, error) {
	h := m.Header
	// An exported key is id-data holding a version 2 manifest, which names
	// its type; before, the content type was the manifest's (version 1).
	legacy := h.ContentType.Equal(cms.OIDKeyManifest)
	if !legacy && (!h.ContentType.Equal(cms.OIDData) || m.ContentLen > 4096) {
		return nil, &KindError{Kind: kindOf(h), Want: "key"}
	}
	if err := checkContext(h, o.Context); err != nil {
		return nil, err
	}
	alg, err := algFromOID(h.Algorithm)
	if err != nil {
		return nil, err
	}
	if m.ContentLen > 4096 {
		return nil, fmt.Errorf("%w: a manifest of %d bytes", ErrMalformed, m.ContentLen)
	}
	body := make([]byte, m.ContentLen, m.ContentLen+int64(len(m.MAC)))
	if _, err := io.ReadFull(m.Content(), body); err != nil {
		return nil, mapCMS(err)
	}
	k, _, err := p.unwrapRecipient(ctx, h, alg)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = k.Destroy(context.WithoutCancel(ctx))
		}
	}()
	var manifest *cms.Manifest
	err = k.use(ctx, "manifest", func(s *p11.Session) error {
		pt, err := p.pool.OpenGCM(s, k.obj, h.Nonce, h.AAD(), append(body, m.MAC...))
		if err != nil {
			if isAuthFailure(err) {
				return fmt.Errorf("%w: the manifest does not authenticate under the unwrapped key (edited blob or spliced key): %w", ErrAuthentication, err)
			}
			return err
		}
		if manifest, err = cms.ParseManifest(pt); err != nil || !legacy && manifest.Version != cms.ManifestVersion {
			if !legacy {
				// Authentic, but not a manifest: a message.
				return &KindError{Kind: "message", Want: "key"}
			}
			return mapCMS(err)
		}
		if manifest.KeyAlg != alg.String() || manifest.KeyBits != alg.bytes()*8 {
			return fmt.Errorf("%w: manifest says %s/%d, the message %v", ErrWrappedKeyInvalid, manifest.KeyAlg, manifest.KeyBits, alg)
		}
		kcv, err := p.pool.KCV(s, k.obj)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(kcv, manifest.KCV) != 1 {
			return fmt.Errorf("%w: key check value differs from the manifest", ErrWrappedKeyInvalid)
		}
		return nil
	})
	if ke := (*KindError)(nil); errors.As(err, &ke) {
		return nil, ke // authentic, but a message: say so plainly
	}
	if err != nil {
		return nil, err
	}
	k.manifest = manifest
	copy(k.id[:], manifest.KeyID)
	k.created = manifest.Created
	ok = true
	return k, nil
}

// Rewrap replaces the recipients of an exported key with wrappings under
// the KEKs in to (another KEK, or a new version of the same one), inside the
// token: the key is unwrapped there, wrapped again, and destroyed. The
// manifest, its nonce and tag are kept as they were, so the blob still
// names the same key; a key exported before manifest version 2 is written
// in the current form instead (see Export). Armour follows the input.
func (p *Provider) Rewrap(ctx context.Context, blob []byte, to []*KEK, o Options) ([]byte, error) {
	if err := checkKEKs(to); err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	m, err := parseBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	k, err := p.importMessage(ctx, m, o)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	defer k.Destroy(context.WithoutCancel(ctx))
	if m.Header.ContentType.Equal(cms.OIDKeyManifest) {
		// Exported before manifest version 2: written again in the current
		// form (same key ID and creation time), which opens in any OpenSSL
		// 3 when there is no context.
		out, err := p.Export(ctx, k, to, Options{Context: o.Context, Armor: cms.IsArmored(blob) || o.Armor})
		if err != nil {
			return nil, fmt.Errorf("rewrap: %w", err)
		}
		return out, nil
	}
	h := *m.Header
	h.Recipients = nil
	err = k.use(ctx, "wrap", func(s *p11.Session) error {
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			h.Recipients = append(h.Recipients, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	body := make([]byte, m.ContentLen)
	if _, err := io.ReadFull(m.Content(), body); err != nil {
		return nil, mapCMS(err)
	}
	der, err := cms.Marshal(&h, body, m.MAC)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", mapCMS(err))
	}
	if cms.IsArmored(blob) || o.Armor {
		return cms.Armor(der), nil
	}
	return der, nil
}

// Recipient describes one recipient of a message or exported key.
type Recipient struct {
	Kind         string // "kek" (KEKRecipientInfo), "ktri" (KeyTransRecipientInfo) or "other" (not usable by hsmkeys)
	KEKID        []byte // kek: the KEK's CKA_ID
	SubjectKeyID []byte // ktri: the RSA key's subject key identifier
	Algorithm    string // key wrap or transport algorithm
	KEKVersion   int    // kek: version from an hsmkeys KEK ID, else 0
}

// Info is what Inspect tells about a blob or message without a token.
type Info struct {
	Kind       string // "key" for an exported key, "message" for an encrypted message
	Format     string // "der" or "pem"
	Algorithm  Algorithm
	Recipients []Recipient
	Context    map[string]string
	ContentLen int64
	// Manifest is the exported key's manifest: nil from Inspect (it is
	// encrypted under the key), set by Provider.InspectKey, which reads it
	// on the token.
	Manifest *KeyManifest
}

// Inspect parses an exported key or a message and reports its recipients
// and algorithms. It needs no token and checks no tag: nothing it reports is
// authenticated until Import or Decrypt succeeds. Kind is a guess for an
// id-data message: an exported key is one whose content has the length of
// a key manifest (a message of exactly that length looks the same; the
// manifest inside, readable only with the key, tells them apart).
func Inspect(blob []byte) (*Info, error) {
	format := "der"
	if cms.IsArmored(blob) {
		format = "pem"
		der, ok := cms.Unarmor(blob)
		if !ok {
			return nil, fmt.Errorf("inspect: %w: bad pem armour", ErrMalformed)
		}
		blob = der
	}
	m, err := cms.Parse(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", mapCMS(err))
	}
	return inspectMessage(m, format)
}

func inspectMessage(m *cms.Message, format string) (*Info, error) {
	h := m.Header
	alg, err := algFromOID(h.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	info := &Info{Kind: "message", Format: format, Algorithm: alg, ContentLen: m.ContentLen}
	if h.ContentType.Equal(cms.OIDKeyManifest) || h.ContentType.Equal(cms.OIDData) && cms.IsManifestLen(m.ContentLen) {
		info.Kind = "key"
	}
	if info.Context, err = h.EncryptionContext(); err != nil {
		return nil, fmt.Errorf("inspect: %w", mapCMS(err))
	}
	for _, r := range h.Recipients {
		switch r := r.(type) {
		case *cms.KEKRecipient:
			info.Recipients = append(info.Recipients, Recipient{Kind: "kek", KEKID: r.KeyID,
				Algorithm: wrapAlgName(r.WrapAlg), KEKVersion: int(p11.KEKVersion(r.KeyID))})
		case *cms.KeyTransRecipient:
			info.Recipients = append(info.Recipients, Recipient{Kind: "ktri", SubjectKeyID: r.SubjectKeyID,
				Algorithm: "rsaes-oaep-" + strings.ToLower(strings.ReplaceAll(r.Hash.String(), "-", ""))})
		case *cms.OtherRecipient:
			info.Recipients = append(info.Recipients, Recipient{Kind: "other", Algorithm: r.Reason})
		}
	}
	return info, nil
}

func wrapAlgName(oid asn1.ObjectIdentifier) string {
	for name, o := range map[string]asn1.ObjectIdentifier{
		"aes128-wrap": cms.OIDAES128Wrap, "aes192-wrap": cms.OIDAES192Wrap, "aes256-wrap": cms.OIDAES256Wrap,
		"aes128-wrap-pad": cms.OIDAES128WrapPad, "aes192-wrap-pad": cms.OIDAES192WrapPad, "aes256-wrap-pad": cms.OIDAES256WrapPad,
	} {
		if oid.Equal(o) {
			return name
		}
	}
	return oid.String()
}

// isAuthFailure reports whether a token error from C_Decrypt under AES-GCM
// means "tag mismatch", by the codes of the token's profile (p11.OpenGCM
// marks them with p11.ErrBadTag: CKR_GENERAL_ERROR on SoftHSM only, the
// standard CKR_ENCRYPTED_DATA_INVALID everywhere).
func isAuthFailure(err error) bool {
	return errors.Is(err, p11.ErrBadTag)
}
