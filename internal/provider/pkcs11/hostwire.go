package pkcs11

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/pkcs11"
)

// The host protocol (isolation: process). Frames in both directions are
//
//	uint32 length (little-endian, of what follows) | byte op or status | body
//
// A request's byte is its operation (hop*), a reply's its status: 0 and the
// results, 1 and a CKR code (a uvarint: classification is unchanged), 2 and
// a message (a failure outside the library). Bodies are uvarints, and byte
// strings as a uvarint length+1 (0: nil) and the bytes. A lane (a socket
// pair, hostclient.go) carries one call at a time: a request, then its
// reply, each in one write.
//
// Adding an operation: a hop* constant at the end of the list below, a
// method of hostClient in hostcalls.go (newReq or onSession, the
// arguments with the wbuf writers, c.do with a decoder of the results),
// the same method on local when it is not a miekg/pkcs11 call already,
// the method in the cryptoki interface (cryptoki.go), and its case in
// serveCall (decode the arguments, r.done(), call the library, encode
// the results). Nothing else in the transport changes.
//
// Hand-written: the messages are a few fixed shapes of integers and byte
// strings, encoded without reflection or generated code in a few hundred
// nanoseconds; protobuf or gob would add a dependency or reflection to
// every call for nothing the format needs.

// Operations.
const (
	hopOpen byte = iota + 1 // the library path: load and C_Initialize
	hopGetInfo
	hopGetSlotList
	hopGetTokenInfo
	hopGetMechanismList
	hopGetMechanismInfo
	hopOpenSession
	hopCloseSession
	hopGetSessionInfo
	hopLogin
	hopLogout
	hopGenerateKey
	hopGenerateKeyPair
	hopCreateObject
	hopDestroyObject
	hopGetAttributeValue
	hopGenerateRandom
	hopWrapKey
	hopUnwrapKey
	hopFinalize
	hopInitialize
	hopCrypt
	hopFindAll
)

// Reply statuses.
const (
	statusOK byte = iota
	statusCKR
	statusError
)

// maxFrame bounds a frame (a request or a reply): far above any operation's
// input (the service caps bodies), small enough that a corrupt length
// cannot make either side allocate without bound.
const maxFrame = 64 << 20

// errBadFrame is a frame that does not decode.
var errBadFrame = errors.New("pkcs11 host protocol: malformed frame")

// wbuf encodes a frame. Its buffer comes from framePool (newReq) and goes
// back to it, cleared, after the call (recycle).
type wbuf struct {
	b  []byte
	fb *frameBuf
	// deadline is when the call gives up (zero: never): its session's
	// call's, from hostClient.deadlines.
	deadline time.Time
}

type frameBuf struct{ b []byte }

var framePool = sync.Pool{New: func() any { return &frameBuf{b: make([]byte, 0, 256)} }}

// recycle clears the frame (it may hold a PIN, plaintext or key material)
// and returns its buffer to the pool; w.b is nil after.
func (w *wbuf) recycle() {
	if w.fb == nil {
		clear(w.b)
		w.b = nil
		return
	}
	clear(w.b)
	if cap(w.b) <= keepBuf {
		w.fb.b = w.b[:0]
		framePool.Put(w.fb)
	}
	w.b, w.fb = nil, nil
}

// roundTrip writes the request frame req on the blocking socket fd in one
// write and reads the reply frame into buf (grown as needed): one read
// when it fits. Any failure is a broken lane.
func roundTrip(fd io.ReadWriter, req []byte, buf []byte) ([]byte, error) {
	binary.LittleEndian.PutUint32(req[0:4], uint32(len(req)-4))
	if err := writeAll(fd, req); err != nil {
		return nil, err
	}
	return readFrame(fd, buf)
}

func writeAll(fd io.Writer, b []byte) error {
	for len(b) > 0 {
		n, err := fd.Write(b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// rawFD reads and writes a blocking descriptor in plain system calls.
type rawFD int

func (f rawFD) Read(b []byte) (int, error) {
	for {
		n, err := syscall.Read(int(f), b)
		if err != syscall.EINTR {
			if n < 0 {
				n = 0
			}
			return n, err
		}
	}
}

func (f rawFD) Write(b []byte) (int, error) {
	for {
		n, err := syscall.Write(int(f), b)
		if err != syscall.EINTR {
			if n < 0 {
				n = 0
			}
			return n, err
		}
	}
}

// laneIO makes the descriptor fd of a lane an io.ReadWriter and its
// close: blocking system calls, so a blocked reader sleeps its thread and
// the request wakes it directly. The host's end: each lane has a thread
// of its own there anyway (it calls into the module). The gateway's end is
// on the poller (lane).
func laneIO(fd int) (io.ReadWriter, func() error) {
	return rawFD(fd), func() error { return syscall.Close(fd) }
}

// readFrame reads one frame (header included) from the blocking socket
// fd into buf. The peer sends nothing past the frame: a lane carries one
// call at a time.
func readFrame(fd io.Reader, buf []byte) ([]byte, error) {
	if cap(buf) < 4096 {
		buf = make([]byte, 0, 4096)
	}
	buf = buf[:cap(buf)]
	n, want, known := 0, 5, false
	for n < want {
		lim := len(buf)
		if known {
			lim = want
		}
		m, err := fd.Read(buf[n:lim])
		if m == 0 && (err == nil || err == io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, err
		}
		n += m
		if !known && n >= 5 {
			known = true
			size := binary.LittleEndian.Uint32(buf[0:4])
			if size < 1 || size > maxFrame {
				return nil, errBadFrame
			}
			want = 4 + int(size)
			if n > want {
				return nil, errBadFrame
			}
			if want > len(buf) {
				nb := make([]byte, want)
				copy(nb, buf[:n])
				clear(buf[:n])
				buf = nb
			}
		}
	}
	return buf[:n], nil
}

func (w *wbuf) uint(v uint) { w.b = binary.AppendUvarint(w.b, uint64(v)) }

func (w *wbuf) bool(v bool) {
	if v {
		w.uint(1)
	} else {
		w.uint(0)
	}
}

func (w *wbuf) bytes(v []byte) {
	if v == nil {
		w.uint(0)
		return
	}
	w.uint(uint(len(v)) + 1)
	w.b = append(w.b, v...)
}

func (w *wbuf) str(s string) { w.uint(uint(len(s))); w.b = append(w.b, s...) }

func (w *wbuf) attrs(as []*pkcs11.Attribute) {
	w.uint(uint(len(as)))
	for _, a := range as {
		w.uint(a.Type)
		w.bytes(a.Value)
	}
}

func (w *wbuf) mechs(ms []*pkcs11.Mechanism) {
	w.uint(uint(len(ms)))
	for _, m := range ms {
		w.uint(m.Mechanism)
		w.bytes(m.Parameter)
	}
}

func (w *wbuf) uints(vs []uint) {
	w.uint(uint(len(vs)))
	for _, v := range vs {
		w.uint(v)
	}
}

func (w *wbuf) version(v pkcs11.Version) { w.uint(uint(v.Major)); w.uint(uint(v.Minor)) }

func (w *wbuf) callMech(m callMech) {
	w.uint(m.Code)
	w.uint(uint(m.Kind))
	w.bytes(m.Raw)
	w.bytes(m.IV)
	w.bytes(m.AAD)
	w.uint(m.TagBits)
	w.uint(m.Hash)
	w.uint(m.MGF)
	w.uint(m.Source)
	w.bytes(m.SourceData)
}

func (w *wbuf) tokenInfo(t pkcs11.TokenInfo) {
	for _, s := range []string{t.Label, t.ManufacturerID, t.Model, t.SerialNumber, t.UTCTime} {
		w.str(s)
	}
	for _, v := range []uint{t.Flags, t.MaxSessionCount, t.SessionCount, t.MaxRwSessionCount, t.RwSessionCount, t.MaxPinLen,
		t.MinPinLen, t.TotalPublicMemory, t.FreePublicMemory, t.TotalPrivateMemory, t.FreePrivateMemory} {
		w.uint(v)
	}
	w.version(t.HardwareVersion)
	w.version(t.FirmwareVersion)
}

// rbuf decodes; the first failure sticks in err and later reads return
// zero values.
type rbuf struct {
	b   []byte
	err error
}

func (r *rbuf) uint() uint {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errBadFrame
		return 0
	}
	r.b = r.b[n:]
	return uint(v)
}

func (r *rbuf) bool() bool { return r.uint() != 0 }

func (r *rbuf) take(n uint) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint(len(r.b)) {
		r.err = errBadFrame
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *rbuf) bytes() []byte {
	n := r.uint()
	if n == 0 || r.err != nil {
		return nil
	}
	out := make([]byte, n-1)
	copy(out, r.take(n-1))
	return out
}

func (r *rbuf) str() string { return string(r.take(r.uint())) }

// count reads a length of a list whose items take at least one byte each.
func (r *rbuf) count() uint {
	n := r.uint()
	if n > uint(len(r.b)) {
		r.err = errBadFrame
		return 0
	}
	return n
}

func (r *rbuf) attrs() []*pkcs11.Attribute {
	n := r.count()
	out := make([]*pkcs11.Attribute, 0, n)
	for i := uint(0); i < n && r.err == nil; i++ {
		out = append(out, &pkcs11.Attribute{Type: r.uint(), Value: r.bytes()})
	}
	return out
}

func (r *rbuf) mechs() []*pkcs11.Mechanism {
	n := r.count()
	out := make([]*pkcs11.Mechanism, 0, n)
	for i := uint(0); i < n && r.err == nil; i++ {
		code := r.uint()
		var params any
		if b := r.bytes(); b != nil {
			params = b
		}
		out = append(out, pkcs11.NewMechanism(code, params))
	}
	return out
}

func (r *rbuf) uints() []uint {
	n := r.count()
	out := make([]uint, 0, n)
	for i := uint(0); i < n && r.err == nil; i++ {
		out = append(out, r.uint())
	}
	return out
}

func (r *rbuf) version() pkcs11.Version {
	return pkcs11.Version{Major: byte(r.uint()), Minor: byte(r.uint())}
}

func (r *rbuf) callMech() callMech {
	return callMech{Code: r.uint(), Kind: uint8(r.uint()), Raw: r.bytes(), IV: r.bytes(), AAD: r.bytes(), TagBits: r.uint(),
		Hash: r.uint(), MGF: r.uint(), Source: r.uint(), SourceData: r.bytes()}
}

func (r *rbuf) tokenInfo() pkcs11.TokenInfo {
	var t pkcs11.TokenInfo
	for _, s := range []*string{&t.Label, &t.ManufacturerID, &t.Model, &t.SerialNumber, &t.UTCTime} {
		*s = r.str()
	}
	for _, v := range []*uint{&t.Flags, &t.MaxSessionCount, &t.SessionCount, &t.MaxRwSessionCount, &t.RwSessionCount, &t.MaxPinLen,
		&t.MinPinLen, &t.TotalPublicMemory, &t.FreePublicMemory, &t.TotalPrivateMemory, &t.FreePrivateMemory} {
		*v = r.uint()
	}
	t.HardwareVersion = r.version()
	t.FirmwareVersion = r.version()
	return t
}

func (r *rbuf) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = errBadFrame
	}
	return r.err
}

// serveCall performs one decoded request on the library and encodes its
// results into w. It is the host's half of every method of hostClient.
func serveCall(l local, op byte, r *rbuf, w *wbuf) error {
	sh := func() pkcs11.SessionHandle { return pkcs11.SessionHandle(r.uint()) }
	obj := func() pkcs11.ObjectHandle { return pkcs11.ObjectHandle(r.uint()) }
	var err error
	switch op {
	case hopGetInfo:
		if err = r.done(); err == nil {
			var i pkcs11.Info
			if i, err = l.GetInfo(); err == nil {
				w.version(i.CryptokiVersion)
				w.str(i.ManufacturerID)
				w.uint(i.Flags)
				w.str(i.LibraryDescription)
				w.version(i.LibraryVersion)
			}
		}
	case hopGetSlotList:
		present := r.bool()
		if err = r.done(); err == nil {
			var s []uint
			s, err = l.GetSlotList(present)
			w.uints(s)
		}
	case hopGetTokenInfo:
		slot := r.uint()
		if err = r.done(); err == nil {
			var t pkcs11.TokenInfo
			t, err = l.GetTokenInfo(slot)
			w.tokenInfo(t)
		}
	case hopGetMechanismList:
		slot := r.uint()
		if err = r.done(); err == nil {
			var ms []*pkcs11.Mechanism
			ms, err = l.GetMechanismList(slot)
			w.mechs(ms)
		}
	case hopGetMechanismInfo:
		slot, ms := r.uint(), r.mechs()
		if err = r.done(); err == nil {
			var i pkcs11.MechanismInfo
			i, err = l.GetMechanismInfo(slot, ms)
			w.uint(i.MinKeySize)
			w.uint(i.MaxKeySize)
			w.uint(i.Flags)
		}
	case hopOpenSession:
		slot, flags := r.uint(), r.uint()
		if err = r.done(); err == nil {
			var h pkcs11.SessionHandle
			h, err = l.OpenSession(slot, flags)
			w.uint(uint(h))
		}
	case hopCloseSession:
		s := sh()
		if err = r.done(); err == nil {
			err = l.CloseSession(s)
		}
	case hopGetSessionInfo:
		s := sh()
		if err = r.done(); err == nil {
			var i pkcs11.SessionInfo
			i, err = l.GetSessionInfo(s)
			w.uints([]uint{i.SlotID, i.State, i.Flags, i.DeviceError})
		}
	case hopLogin:
		s, user, pin := sh(), r.uint(), r.str()
		if err = r.done(); err == nil {
			err = l.Login(s, user, pin)
		}
	case hopLogout:
		s := sh()
		if err = r.done(); err == nil {
			err = l.Logout(s)
		}
	case hopGenerateKey:
		s, ms, t := sh(), r.mechs(), r.attrs()
		if err = r.done(); err == nil {
			var h pkcs11.ObjectHandle
			h, err = l.GenerateKey(s, ms, t)
			w.uint(uint(h))
		}
	case hopGenerateKeyPair:
		s, ms, pub, priv := sh(), r.mechs(), r.attrs(), r.attrs()
		if err = r.done(); err == nil {
			var a, b pkcs11.ObjectHandle
			a, b, err = l.GenerateKeyPair(s, ms, pub, priv)
			w.uint(uint(a))
			w.uint(uint(b))
		}
	case hopCreateObject:
		s, t := sh(), r.attrs()
		if err = r.done(); err == nil {
			var h pkcs11.ObjectHandle
			h, err = l.CreateObject(s, t)
			w.uint(uint(h))
		}
	case hopDestroyObject:
		s, o := sh(), obj()
		if err = r.done(); err == nil {
			err = l.DestroyObject(s, o)
		}
	case hopGetAttributeValue:
		s, o, t := sh(), obj(), r.attrs()
		if err = r.done(); err == nil {
			var as []*pkcs11.Attribute
			as, err = l.GetAttributeValue(s, o, t)
			w.attrs(as)
		}
	case hopGenerateRandom:
		s, n := sh(), r.uint()
		if err = r.done(); err == nil {
			var b []byte
			b, err = l.GenerateRandom(s, int(n))
			w.bytes(b)
		}
	case hopWrapKey:
		s, ms, kek, key := sh(), r.mechs(), obj(), obj()
		if err = r.done(); err == nil {
			var b []byte
			b, err = l.WrapKey(s, ms, kek, key)
			w.bytes(b)
		}
	case hopUnwrapKey:
		s, ms, kek, wrapped, t := sh(), r.mechs(), obj(), r.bytes(), r.attrs()
		if err = r.done(); err == nil {
			var h pkcs11.ObjectHandle
			h, err = l.UnwrapKey(s, ms, kek, wrapped, t)
			w.uint(uint(h))
		}
	case hopFinalize:
		if err = r.done(); err == nil {
			err = l.Finalize()
		}
	case hopInitialize:
		if err = r.done(); err == nil {
			err = l.Initialize()
		}
	case hopCrypt:
		s, u, m, key, in := sh(), use(r.uint()), r.callMech(), obj(), r.bytes()
		if err = r.done(); err == nil {
			var out, iv []byte
			out, iv, err = l.Crypt(s, u, m, key, in)
			w.bytes(out)
			w.bytes(iv)
		}
	case hopFindAll:
		s, t := sh(), r.attrs()
		if err = r.done(); err == nil {
			var hs []pkcs11.ObjectHandle
			hs, err = l.FindAll(s, t)
			w.uint(uint(len(hs)))
			for _, h := range hs {
				w.uint(uint(h))
			}
		}
	default:
		err = serveMaterial(l, op, r, w)
	}
	return err
}
