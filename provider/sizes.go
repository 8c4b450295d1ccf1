package provider

// UnknownSize is the size to give Encrypt when the length of its input is
// not known in advance (a pipe, an encoder's output): the message is then
// written as indefinite-length BER, as openssl cms -stream writes it, and
// is as long as the input turns out to be. Any other negative size is
// ErrInvalidInput.
const UnknownSize int64 = -1

// MaxMessageSize is the longest plaintext one message may hold:
// 68,719,476,704 bytes (2^36 - 32, about 64 GiB), which is 2^39 - 256
// bits, the most AES-GCM may encrypt under one key and nonce (NIST SP
// 800-38D §5.2.1.1). Encrypt refuses a larger announced size before it
// starts, and Encrypt and NewEncrypter's writer fail with ErrInvalidInput
// when the input grows past it; the message is then void. Split larger
// data into several messages.
const MaxMessageSize int64 = 1<<36 - 32

// The constant above, for go doc, is the limit the streams enforce.
var _ = [1]struct{}{}[MaxMessageSize-maxGCMContent]
