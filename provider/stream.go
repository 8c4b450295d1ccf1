package provider

// Encrypted messages: a CMS AuthEnvelopedData (id-data content) whose
// content-encryption key is a fresh session key per message, wrapped for
// each recipient; the content is encrypted by the token in a streaming
// fashion, so a message of any size goes through in bounded memory.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"slices"
	"sync"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// DefaultChunkSize is how much data one token call encrypts or decrypts in
// a stream unless Config.ChunkSize says otherwise. Chosen by measurement
// (BenchmarkChunkSize, docs/performance.md): on SoftHSM 16 and 32 KiB parts
// run at about 770 MiB/s, 64 KiB at 460, 1 MiB at 240; of the two fastest,
// 32 KiB makes half the calls, which a networked HSM pays for in round trips.
const DefaultChunkSize = 32 << 10

// chunkSize is the part size of this provider's streams.
func (p *Provider) chunkSize() int {
	if p.cfg.ChunkSize > 0 {
		return p.partSize(p.cfg.ChunkSize)
	}
	return p.partSize(DefaultChunkSize)
}

// oneShotLimit is the largest message decrypted with the token's own
// AES-GCM decryption, which buffers the whole message inside the token
// until it has checked the tag (SoftHSM does; PKCS#11 v2.40 mechanisms
// §2.12.3 allows it). Larger messages are checked and decrypted in
// streaming passes (see Decrypt).
const oneShotLimit = 4 << 20

// maxGCMContent is the most AES-GCM may encrypt under one nonce: 2^39-256
// bits (NIST SP 800-38D §5.2.1.1).
const maxGCMContent = (1<<39 - 256) / 8

// Encrypt encrypts src for the KEKs in to and writes a CMS message to dst
// (DER, or PEM with o.Armor). Each message gets a fresh session key, made on
// the token, wrapped for each KEK, used for AES-GCM on the token, and
// destroyed. size is the length of src when known (the message is then
// definite-length DER), or UnknownSize (indefinite-length BER, as openssl
// -stream writes). Memory use does not grow with the size of src. src may
// hold at most MaxMessageSize bytes (the AES-GCM limit of one message);
// more is ErrInvalidInput, before anything is written when size says so.
func (p *Provider) Encrypt(ctx context.Context, dst io.Writer, src io.Reader, size int64, to []*KEK, o Options) (err error) {
	if dst == nil || src == nil {
		return fmt.Errorf("encrypt: %w: nil reader or writer", ErrInvalidInput)
	}
	if size > maxGCMContent {
		return fmt.Errorf("encrypt: %w: %d bytes is more than AES-GCM may encrypt under one key and nonce", ErrInvalidInput, size)
	}
	if size < UnknownSize {
		return fmt.Errorf("encrypt: %w: size %d (want the length of src, or UnknownSize)", ErrInvalidInput, size)
	}
	if err := checkKEKs(to); err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	src, dst = closingReader{p, src}, closingWriter{p, dst} // end at Shutdown
	if p.cfg.ExportPolicy == ExportNone {
		return fmt.Errorf("encrypt: %w: export policy none: message keys cannot be wrapped for recipients", ErrPolicy)
	}
	// A new key, or one the data-key cache holds with its recipients (cache.go).
	k, recipients, done, err := p.encryptKey(ctx, to, o.Context, size)
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	defer func() { done(err) }()

	out := dst
	var armor io.WriteCloser
	if o.Armor {
		armor = cms.NewArmorWriter(dst)
		out = armor
	}
	bw := bufio.NewWriterSize(out, 2*p.chunkSize())
	err = k.use(ctx, "content", func(s *p11.Session) error {
		h := &cms.Header{Algorithm: gcmOID(k.alg), Nonce: make([]byte, p11.NonceSize)}
		var err error
		if h.AuthAttrs, err = authAttrs(cms.ContentTypeAttr(cms.OIDData), o.Context, false); err != nil {
			return err
		}
		h.Recipients = recipients
		for _, kek := range to {
			if recipients != nil {
				break
			}
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
		return p.encryptContent(ctx, s, k.obj, h, bw, src, size)
	})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && armor != nil {
		err = armor.Close()
	}
	if err != nil {
		return fmt.Errorf("encrypt: %w", mapCMS(err))
	}
	return nil
}

// encryptContent writes header, GCM ciphertext of src and trailer.
func (p *Provider) encryptContent(ctx context.Context, s *p11.Session, key p11.Object, h *cms.Header, w io.Writer, src io.Reader, size int64) error {
	emit := func(c []byte) error {
		if size >= 0 {
			_, err := w.Write(c)
			return err
		}
		return cms.WriteChunk(w, c)
	}
	buf := make([]byte, p.chunkSize())
	first, ferr := io.ReadFull(src, buf)
	if ferr == io.EOF || ferr == io.ErrUnexpectedEOF {
		// The whole message fits in one part: one C_Encrypt, where
		// C_EncryptUpdate and C_EncryptFinal would be two round trips.
		return p.encryptOnePart(s, key, h, w, emit, buf[:first], size)
	}
	if ferr != nil {
		return ferr
	}
	// The encryption starts before the header is written: a token that
	// makes its own IV gives it now (p11.GCMEncrypt).
	enc, err := p.pool.GCMEncrypt(s, key, h.Nonce, h.AAD())
	if errors.Is(err, p11.ErrNoStreaming) {
		return p.encryptWhole(s, key, h, w, io.MultiReader(bytes.NewReader(buf[:first]), src), size)
	}
	if err != nil {
		return err
	}
	defer enc.Abort()
	if err := cms.WriteHeader(w, h, size); err != nil {
		return err
	}
	var n int64
	for pending := true; ; pending = false {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, rerr := first, error(nil)
		if !pending {
			m, rerr = io.ReadFull(src, buf)
		}
		if m > 0 {
			n += int64(m)
			if size >= 0 && n > size {
				return fmt.Errorf("%w: the input is longer than the %d bytes announced", ErrInvalidInput, size)
			}
			if n > maxGCMContent {
				return fmt.Errorf("%w: the input is more than AES-GCM may encrypt under one key and nonce", ErrInvalidInput)
			}
			c, err := enc.UpdateReuse(buf[:m]) // emit hands c on before the next part
			if err != nil {
				return err
			}
			if err := emit(c); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: the input is %d bytes, %d were announced", ErrInvalidInput, n, size)
	}
	last, err := enc.Final()
	if err != nil {
		return err
	}
	if len(last) < p11.TagSize {
		return fmt.Errorf("token returned %d bytes at the end of a gcm encryption", len(last))
	}
	if err := emit(last[:len(last)-p11.TagSize]); err != nil {
		return err
	}
	return cms.WriteTrailer(w, h, size, last[len(last)-p11.TagSize:])
}

// encryptOnePart encrypts a message of at most one part with a single
// C_Encrypt and writes the header, the ciphertext, its trailer and tag.
func (p *Provider) encryptOnePart(s *p11.Session, key p11.Object, h *cms.Header, w io.Writer, emit func([]byte) error, msg []byte, size int64) error {
	if size >= 0 && int64(len(msg)) != size {
		return fmt.Errorf("%w: the input is %d bytes, %d were announced", ErrInvalidInput, len(msg), size)
	}
	// SealGCM first: a token that makes its own IV gives it there, and the
	// header carries it.
	sealed, err := p.pool.SealGCM(s, key, h.Nonce, h.AAD(), msg)
	if err != nil {
		return err
	}
	if len(sealed) != len(msg)+p11.TagSize {
		return fmt.Errorf("token returned %d bytes of ciphertext for %d of plaintext", len(sealed), len(msg))
	}
	if err := cms.WriteHeader(w, h, size); err != nil {
		return err
	}
	if body := sealed[:len(msg)]; len(body) > 0 {
		if err := emit(body); err != nil {
			return err
		}
	}
	return cms.WriteTrailer(w, h, size, sealed[len(msg):])
}

// Decrypt decrypts a message made by Encrypt (or by openssl cms for a
// recipient on this token) and writes the plaintext to dst. The message is
// read from src (DER, BER or PEM), size bytes long. o.Context must equal the
// encryption context the message was made with.
//
// Decrypt writes to dst only plaintext of ciphertext it has authenticated,
// whatever happens to src during the call, and returns nil only once dst
// has the whole plaintext of the authenticated message. A message up to
// 4 MiB is read once and decrypted by the token's AES-GCM in one call:
// nothing reaches dst unless it authenticates. A larger one is read twice:
// pass 1 checks the tag (AES-CTR decryption and AES-GCM re-encryption on
// the token), writes nothing, and keeps a SHA-256 of each block (1 MiB,
// or the whole chunks nearest to it) of the ciphertext it authenticated; pass 2 reads each block again into a
// buffer of its own, compares its hash with pass 1's before it decrypts
// any of it, and decrypts those same buffered bytes to dst. If src changes
// between or during the passes (a file rewritten meanwhile), Decrypt
// returns ErrAuthentication and dst holds a prefix of the authenticated
// plaintext, the blocks before the first that changed, never a byte of
// the changed data; a write or token error in pass 2 likewise leaves a
// prefix of the authenticated plaintext with the error. A
// message that does not authenticate gives dst nothing. When Decrypt
// returns an error, the plaintext is incomplete: write to a temporary file
// and keep it only on success, as hsmkeys does. src must honour the
// io.ReaderAt contract and not keep the buffers it is given.
func (p *Provider) Decrypt(ctx context.Context, dst io.Writer, src io.ReaderAt, size int64, o Options) error {
	if dst == nil || src == nil {
		return fmt.Errorf("decrypt: %w: nil reader or writer", ErrInvalidInput)
	}
	if size <= 0 {
		return fmt.Errorf("decrypt: %w: empty input", ErrMalformed)
	}
	src, dst = closingReaderAt{p, src}, closingWriter{p, dst} // end at Shutdown
	var head [64]byte
	n, _ := src.ReadAt(head[:], 0)
	if cms.IsArmored(head[:n]) {
		f, fsize, done, err := unarmorToTemp(io.NewSectionReader(src, 0, size))
		if err != nil {
			return fmt.Errorf("decrypt: %w", err)
		}
		defer done()
		src, size = f, fsize
	}
	m, err := cms.Parse(src, size)
	if err != nil {
		return fmt.Errorf("decrypt: %w", mapCMS(err))
	}
	if err := p.decryptMessage(ctx, dst, m, o); err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	return nil
}

// unarmorToTemp decodes PEM into a temporary file (ciphertext only), so
// that the message can be read at random offsets. The file is removed as
// soon as it is made: it has no name while it is used, nothing is left if
// the process dies, and no other process can open it by name to change
// it. done closes it.
func unarmorToTemp(r io.Reader) (f *os.File, n int64, done func(), err error) {
	f, err = os.CreateTemp("", "hsmkeys-der-*")
	if err != nil {
		return nil, 0, nil, err
	}
	done = func() { f.Close() }
	if os.Remove(f.Name()) != nil { // where an open file cannot be removed (Windows): after Close
		done = func() { f.Close(); os.Remove(f.Name()) }
	}
	n, err = io.Copy(f, cms.NewUnarmorReader(r))
	if err != nil {
		done()
		return nil, 0, nil, mapCMS(err)
	}
	return f, n, done, nil
}

func (p *Provider) decryptMessage(ctx context.Context, dst io.Writer, m *cms.Message, o Options) (err error) {
	h := m.Header
	if kind := kindOf(h); kind != "message" {
		return &KindError{Kind: kind, Want: "message"}
	}
	if h.ICVLen != 0 && h.ICVLen != p11.TagSize {
		return fmt.Errorf("%w: a %d-byte gcm tag (hsmkeys checks 16-byte tags)", ErrUnsupported, h.ICVLen)
	}
	if len(h.Nonce) != p11.NonceSize {
		return fmt.Errorf("%w: a %d-byte gcm nonce", ErrUnsupported, len(h.Nonce))
	}
	if err := checkContext(h, o.Context); err != nil {
		return err
	}
	alg, err := algFromOID(h.Algorithm)
	if err != nil {
		return err
	}
	// Unwrapped now, or kept by the data-key cache (cache.go).
	k, done, err := p.decryptKey(ctx, h, alg, o.Context)
	if err != nil {
		return err
	}
	defer func() { done(err) }()
	if m.ContentLen <= p.oneShotMax() {
		err = p.decryptOneShot(ctx, dst, k, m)
		return err
	}
	err = p.decryptStreaming(ctx, dst, k, m)
	return err
}

func (p *Provider) decryptOneShot(ctx context.Context, dst io.Writer, k *Key, m *cms.Message) error {
	sealed := make([]byte, m.ContentLen, m.ContentLen+int64(len(m.MAC)))
	if _, err := io.ReadFull(m.Content(), sealed); err != nil {
		return mapCMS(err)
	}
	sealed = append(sealed, m.MAC...)
	var pt []byte
	err := k.use(ctx, "content", func(s *p11.Session) error {
		var err error
		pt, err = p.pool.OpenGCM(s, k.obj, m.Header.Nonce, m.Header.AAD(), sealed)
		if err != nil && isAuthFailure(err) {
			return fmt.Errorf("%w: %w", ErrAuthentication, err)
		}
		return err
	})
	if err != nil {
		return err
	}
	if isExportedKey(pt) {
		clear(pt)
		return &KindError{Kind: "key", Want: "message"}
	}
	_, err = dst.Write(pt)
	clear(pt)
	return err
}

// isExportedKey reports whether authenticated content pt is the
// manifest of an exported key (version 2 names its type; see Export).
func isExportedKey(pt []byte) bool {
	if !cms.IsManifestLen(int64(len(pt))) {
		return false
	}
	m, err := cms.ParseManifest(pt)
	return err == nil && m.Version == cms.ManifestVersion
}

// decryptStreaming checks the tag of a large message, then decrypts it.
//
// Pass 1, on two sessions at once: AES-CTR from inc32(J0) gives the
// plaintext, which AES-GCM encryption with the message's own nonce and AAD
// turns back into the ciphertext and, at the end, the tag. The plaintext is
// discarded. Pass 2, only if the tags match: AES-CTR again, to dst. Every
// AES operation runs on the token under the session key; Go sees plaintext
// only in chunk-sized pieces and never the key or the GHASH key.
//
// src is read twice and may change in between or during either pass (a
// file rewritten, an io.ReaderAt that answers differently). Both passes
// read the content in blocks (blockSize) into buffers of their own and
// hash each block (SHA-256). Pass 1 keeps the hash of every block it
// authenticated: 32 bytes a block, 32 KiB per GiB of message. Pass 2
// compares the hash of each block it read with pass 1's before it decrypts
// any byte of it, and then decrypts exactly the bytes it hashed, from its
// own buffer; a block that differs ends pass 2 with ErrAuthentication and
// nothing of it is written. So every byte written to dst is plaintext of
// ciphertext that pass 1 authenticated, in order: at worst a prefix of the
// message's plaintext, whole blocks of it, when pass 2 fails.
//
// The reading and hashing run on a goroutine of their own (readBlocks),
// one block ahead of the token calls. SHA-256 rather than a second GCM
// pass on the token: BenchmarkDecryptStream (64 MiB, six interleaved rounds
// on a loaded 2-core machine) gave medians of 215 MB/s without any check,
// 122 MB/s hashing inline, 211 MB/s hashing beside the token calls (one
// hash per pass, compared at the end); a second GCM pass measured 220 MB/s
// against 606 unchecked. These blocks measured a median of 255 MB/s against
// 266 for the hash-at-the-end code (seven interleaved rounds; rounds ranged
// from 110 to 420 MB/s), and 256 KiB blocks or a third buffer no better.
func (p *Provider) decryptStreaming(ctx context.Context, dst io.Writer, k *Key, m *cms.Message) error {
	h := m.Header
	chunk := p.chunkSize()
	bs := blockSize(chunk)
	// pass 1's hash of each block it authenticated; ContentLen is bounded
	// by the input's size (cms.Parse counts the bytes there).
	sums := make([][sha256.Size]byte, 0, m.ContentLen/int64(bs)+1)
	err := k.usePair(ctx, "tag check", func(s1, s2 *p11.Session) error {
		ctr, err := p.pool.CTR(s1, k.obj, h.Nonce)
		if err != nil {
			return err
		}
		defer ctr.Abort()
		gcm, err := p.pool.GCMEncrypt(s2, k.obj, h.Nonce, h.AAD())
		if err != nil {
			return err
		}
		defer gcm.Abort()
		blocks := readBlocks(m.Content(), bs)
		defer blocks.stop()
		var n int64
		for b := range blocks.each(ctx) {
			for c := range slices.Chunk(b.data, chunk) {
				if err := ctx.Err(); err != nil {
					return err
				}
				pt, err := ctr.Update(c)
				if err != nil {
					return err
				}
				again, err := gcm.Update(pt)
				clear(pt)
				if err != nil {
					return err
				}
				if !bytes.Equal(again, c) {
					return errors.New("token aes-ctr and aes-gcm disagree about the keystream")
				}
			}
			n += int64(len(b.data))
			sums = append(sums, b.sum)
		}
		if err := blocks.err(); err != nil {
			return err
		}
		if n != m.ContentLen {
			return fmt.Errorf("%w: the input changed while it was read: %d bytes of content, %d announced", ErrAuthentication, n, m.ContentLen)
		}
		if _, err := ctr.Final(); err != nil {
			return err
		}
		last, err := gcm.Final()
		if err != nil {
			return err
		}
		if len(last) < p11.TagSize || subtle.ConstantTimeCompare(last[len(last)-p11.TagSize:], m.MAC) != 1 {
			return fmt.Errorf("%w: gcm tag mismatch", ErrAuthentication)
		}
		return nil
	})
	if err != nil {
		return err
	}
	changed := fmt.Errorf("%w: the input changed while it was decrypted; what was written before is a prefix of the authenticated plaintext", ErrAuthentication)
	return k.use(ctx, "content", func(s *p11.Session) error {
		ctr, err := p.pool.CTR(s, k.obj, h.Nonce)
		if err != nil {
			return err
		}
		defer ctr.Abort()
		blocks := readBlocks(m.Content(), bs)
		defer blocks.stop()
		i := 0
		for b := range blocks.each(ctx) {
			// The check comes before any byte of the block is decrypted,
			// and what is decrypted is b.data, the bytes that were hashed.
			if i >= len(sums) || subtle.ConstantTimeCompare(b.sum[:], sums[i][:]) != 1 {
				return changed
			}
			i++
			for c := range slices.Chunk(b.data, chunk) {
				if err := ctx.Err(); err != nil {
					return err
				}
				pt, err := ctr.Update(c)
				if err != nil {
					return err
				}
				_, err = dst.Write(pt)
				clear(pt)
				if err != nil {
					return err
				}
			}
		}
		if err := blocks.err(); err != nil {
			return err
		}
		if i != len(sums) {
			return changed // the input got shorter
		}
		rest, err := ctr.Final()
		if err == nil && len(rest) > 0 {
			_, err = dst.Write(rest)
		}
		return err
	})
}

// blockSize is the size of the blocks Decrypt hashes: a whole number of
// chunks, about 1 MiB.
func blockSize(chunk int) int {
	return max(chunk, (1<<20)/chunk*chunk)
}

// block is a piece of the content read by readBlocks, with its SHA-256.
type block struct {
	data []byte
	sum  [sha256.Size]byte
}

// blockReader reads a stream in blocks, on a goroutine of its own, into
// two buffers of its own, and hashes each block as it is read: the hash is
// of the bytes the consumer gets, which nobody else holds.
type blockReader struct {
	out   chan block
	free  chan []byte
	quit  chan struct{}
	done  chan struct{}
	once  sync.Once
	fault error // set by the goroutine before it closes out
}

func readBlocks(r io.Reader, size int) *blockReader {
	const buffers = 2 // one with the consumer, one being read
	br := &blockReader{out: make(chan block), free: make(chan []byte, buffers), quit: make(chan struct{}), done: make(chan struct{})}
	for range buffers {
		br.free <- make([]byte, size)
	}
	go func() {
		defer close(br.done)
		defer close(br.out)
		for {
			var buf []byte
			select {
			case buf = <-br.free:
			case <-br.quit:
				return
			}
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				select {
				case br.out <- block{data: buf[:n], sum: sha256.Sum256(buf[:n])}:
				case <-br.quit:
					return
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return
			}
			if err != nil {
				br.fault = mapCMS(err)
				return
			}
		}
	}()
	return br
}

// each yields the blocks in order until the end of the stream, an error
// (see err) or the end of ctx. The block's buffer is reused once the loop
// body returns.
func (br *blockReader) each(ctx context.Context) iter.Seq[block] {
	return func(yield func(block) bool) {
		for {
			var b block
			var ok bool
			select {
			case b, ok = <-br.out:
			case <-ctx.Done():
				br.stop()
				br.fault = ctx.Err()
				return
			}
			if !ok {
				return
			}
			more := yield(b)
			br.free <- b.data[:cap(b.data)]
			if !more {
				return
			}
		}
	}
}

// err is the error that ended each early: a read error or the context's.
func (br *blockReader) err() error {
	<-br.done
	return br.fault
}

// stop ends the goroutine and waits for it, so that nothing reads the
// stream once it returns; safe to call more than once.
func (br *blockReader) stop() {
	br.once.Do(func() { close(br.quit) })
	<-br.done
}
