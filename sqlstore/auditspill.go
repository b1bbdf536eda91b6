package sqlstore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Why an event that did not fit in the retry buffer was not spilled.
var (
	errNoSpill   = errors.New("sqlstore: audit retry buffer full and no spill file")
	errSpillFull = errors.New("sqlstore: audit retry buffer and spill file full")
)

// maxSpillLine bounds a line read back from a spill file; longer lines
// are skipped as unreadable. Lines written are far shorter: each field is
// cut to maxAuditText bytes, which JSON escaping at most sextuples.
const maxSpillLine = 128 << 10

// spillFile is the file in which an [Auditor] keeps the events that do
// not fit in its retry buffer, one JSON object per line, oldest first.
// Lines before off have been written to the table; the file is emptied
// when all have, and removed by close. It is safe for concurrent use.
type spillFile struct {
	path string
	max  int64

	mu   sync.Mutex
	f    *os.File // nil after close
	rd   *bufio.Reader
	size int64 // bytes in the file
	off  int64 // bytes of it already written to the table
	n    int   // lines after off
}

// spillRecord is one line of a spill file. Its keys are those of the
// records of [m2mauth.SlogAuditor].
type spillRecord struct {
	Time      time.Time `json:"event_time"`
	Key       string    `json:"event_key,omitempty"`
	Type      string    `json:"event"`
	ClientID  string    `json:"client_id,omitempty"`
	RemoteIP  string    `json:"remote_ip,omitempty"`
	UserAgent string    `json:"user_agent,omitempty"`
	Audience  string    `json:"audience,omitempty"`
	Scope     string    `json:"scope,omitempty"`
	JTI       string    `json:"jti,omitempty"`
	SecretID  string    `json:"secret_id,omitempty"`
	Error     string    `json:"error,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

// spillChunk is a run of lines read from a spill file.
type spillChunk struct {
	events []record
	bad    int   // lines that could not be read back
	lines  int   // len(events) + bad
	end    int64 // the offset after the last line
}

// errSpillInUse is the error of a spill file that another Auditor, in
// this process or another, has open.
var errSpillInUse = errors.New("in use by another auditor")

// openSpill opens, or creates, the spill file at path, locks it, and
// counts the lines that an earlier process left in it. It returns nil for
// an empty path, and an error wrapping errSpillInUse when another Auditor
// holds the file.
func openSpill(path string, max int64) (*spillFile, error) {
	if path == "" {
		return nil, nil
	}
	f, err := openLockedSpill(path)
	if err != nil {
		return nil, err
	}
	s := &spillFile{path: path, max: max, f: f, rd: bufio.NewReaderSize(nil, maxSpillLine)}
	if err := s.count(); err != nil {
		f.Close()
		return nil, fmt.Errorf("sqlstore: spill file: %w", err)
	}
	return s, nil
}

// spillOpened, when set by a test, runs between the opening and the
// locking of a spill file.
var spillOpened func()

// openLockedSpill opens, or creates, the file at path and locks it (see
// lockSpill). The lock is on the file opened: if another Auditor removed
// or replaced the path meanwhile (its Close), the file is opened again,
// so that the lock held is that of the file at path.
func openLockedSpill(path string) (*os.File, error) {
	for try := 0; ; try++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND|spillNoFollow, 0o600)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: spill file: %w", err)
		}
		if spillOpened != nil {
			spillOpened()
		}
		if err := lockSpill(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("sqlstore: spill file %s: %w", path, err)
		}
		fi, ferr := f.Stat()
		pi, perr := os.Stat(path)
		if ferr == nil && perr == nil && os.SameFile(fi, pi) {
			return f, nil
		}
		f.Close()
		if try == 3 {
			return nil, fmt.Errorf("sqlstore: spill file %s: %w", path, errSpillInUse)
		}
	}
}

// count sets size and n from the file, and ends a last line that a
// process stopped in the middle of, so that it is skipped as unreadable
// rather than glued to the next line appended.
func (s *spillFile) count() error {
	fi, err := s.f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", s.path)
	}
	if err := checkSpillFile(fi); err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	s.rd.Reset(io.NewSectionReader(s.f, 0, fi.Size()))
	var last byte
	for first, long, marks := true, false, true; ; {
		b, err := s.rd.ReadSlice('\n')
		if len(b) > 0 {
			last = b[len(b)-1]
		}
		s.size += int64(len(b))
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
		if err != nil {
			long = true
			continue
		}
		if marks = marks && !long && bytes.HasPrefix(b, []byte(spillWritten)); marks {
			// Lines an earlier process wrote to the table (see
			// markWritten).
			s.off, first = s.size, false
			continue
		}
		if first && (long || !spillLine(b)) {
			// A file of something else (a path given by mistake: a
			// log, the database) is left as it is, not emptied.
			return fmt.Errorf("%s is not a spill file: its first line is not an audit event", s.path)
		}
		first, long = false, false
		s.n++
	}
	if s.size > 0 && last != '\n' {
		if _, err := s.f.Write([]byte{'\n'}); err != nil {
			return err
		}
		if err := s.f.Sync(); err != nil {
			return err
		}
		s.size++
		s.n++
	}
	return nil
}

// spillPrefix begins every line an Auditor writes to a spill file: the
// first key of a spillRecord.
const spillPrefix = `{"event_time":`

// spillLine reports whether line (with or without its end) is one an
// Auditor may have written: a record, or the start of one that a process
// stopped in the middle of. Every line of a spill file is, unless
// someone else wrote to it.
func spillLine(line []byte) bool {
	line = bytes.TrimRight(line, "\r\n")
	n := min(len(line), len(spillPrefix))
	return n > 0 && string(line[:n]) == spillPrefix[:n]
}

// jsonTime returns t in UTC, or the nearest instant JSON can encode
// (years 0 to 9999 in UTC), so that an event with a time beyond is
// spilled rather than lost.
func jsonTime(t time.Time) time.Time {
	t = t.UTC()
	switch lo, hi := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC); {
	case t.Before(lo):
		return lo
	case t.After(hi):
		return hi
	}
	return t
}

// pending returns the lines not yet written to the table.
func (s *spillFile) pending() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// append appends as many of events as fit within the size bound, and
// syncs the file. It returns how many it appended, and why not all.
func (s *spillFile) append(events []record) (int, error) {
	if s == nil {
		return 0, errNoSpill
	}
	var buf []byte
	ends := make([]int, 0, len(events))
	for _, e := range events {
		line, err := json.Marshal(spillRecord{
			Time: jsonTime(e.Time), Key: e.key.String(), Type: auditText(string(e.Type)), ClientID: auditText(e.ClientID),
			RemoteIP: auditText(e.RemoteIP), UserAgent: auditText(e.UserAgent), Audience: auditText(e.Audience),
			Scope: auditText(e.Scopes.String()), JTI: auditText(e.JTI), SecretID: auditText(e.SecretID),
			Error: auditText(e.Error), Reason: auditText(e.Reason),
		})
		if err != nil { // not expected: every field encodes
			break
		}
		buf = append(append(buf, line...), '\n')
		ends = append(ends, len(buf))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return 0, errAuditorClosed
	}
	k := 0
	for k < len(ends) && s.size+int64(ends[k]) <= s.max {
		k++
	}
	if k == 0 {
		return 0, errSpillFull
	}
	if _, err := s.f.Write(buf[:ends[k-1]]); err != nil {
		s.f.Truncate(s.size)
		return 0, fmt.Errorf("sqlstore: spill file: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		s.f.Truncate(s.size)
		return 0, fmt.Errorf("sqlstore: spill file: %w", err)
	}
	s.size += int64(ends[k-1])
	s.n += k
	if k < len(events) {
		return k, errSpillFull
	}
	return k, nil
}

// next reads up to max lines after off, without consuming them: commit
// does, once they are written to the table.
func (s *spillFile) next(max int) (spillChunk, error) {
	c := spillChunk{}
	if s == nil {
		return c, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.end = s.off
	if s.f == nil || s.off >= s.size {
		s.n = 0
		return c, nil
	}
	s.rd.Reset(io.NewSectionReader(s.f, s.off, s.size-s.off))
	for c.lines < max {
		var (
			line []byte
			long bool
			err  error
			at   = c.end // where the line begins
		)
		for {
			var b []byte
			b, err = s.rd.ReadSlice('\n')
			c.end += int64(len(b))
			if !errors.Is(err, bufio.ErrBufferFull) {
				line = b
				break
			}
			long = true
		}
		if err == io.EOF && len(line) == 0 && !long {
			break
		}
		if err != nil && err != io.EOF {
			return spillChunk{}, err
		}
		c.lines++
		var (
			r   spillRecord
			key eventKey
		)
		if long || err == io.EOF || !spillLine(line) || json.Unmarshal(line, &r) != nil {
			c.bad++
			continue
		}
		if !key.parse(r.Key) {
			// A line of a release before keys, or whose key was
			// damaged: a key of its own, the same at every read, so
			// that a write repeated after a lost answer, in this
			// process or the next, inserts nothing.
			key = lineKey(at, line)
		}
		c.events = append(c.events, record{key: key, AuditEvent: m2mauth.AuditEvent{
			Time: r.Time, Type: m2mauth.AuditEventType(r.Type), ClientID: r.ClientID,
			RemoteIP: r.RemoteIP, UserAgent: r.UserAgent, Audience: r.Audience,
			Scopes: m2mauth.Scopes(strings.Fields(r.Scope)), JTI: r.JTI, SecretID: r.SecretID,
			Error: r.Error, Reason: r.Reason,
		}})
	}
	if c.lines == 0 {
		s.n = 0
	}
	return c, nil
}

// commit records that the lines of c are written to the table, and
// empties the file once all its lines are.
func (s *spillFile) commit(c spillChunk) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.off = c.end
	s.n = max(s.n-c.lines, 0)
	if s.off < s.size || s.f == nil {
		return nil
	}
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("sqlstore: spill file: %w", err)
	}
	s.off, s.size, s.n = 0, 0, 0
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("sqlstore: spill file: %w", err)
	}
	return nil
}

// close closes the file: it removes it when all its lines are written to
// the table, or else rewrites it without the lines that are, so that the
// next process writes only the others.
func (s *spillFile) close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	f := s.f
	s.f = nil
	switch {
	case s.off >= s.size:
		s.off, s.size, s.n = 0, 0, 0
		return removeSpill(f, s.path)
	case s.off > 0:
		err := s.compact(f)
		if err != nil && s.markWritten(f) == nil {
			// No room for a copy (the disk the file filled is still
			// full, say), but the lines written are marked in place.
			err = nil
		}
		return errors.Join(err, f.Close())
	}
	return f.Close()
}

// spillWritten begins the lines that stand, at the start of a spill
// file, for lines written to the table: see markWritten.
const spillWritten = spillPrefix + `"written"`

// markWritten overwrites, in place, the lines before off with lines of
// spillWritten and spaces, as many bytes in all, which count takes for
// written. It needs no room that the file does not hold already, where
// compact needs room for a copy. A process stopped while it writes
// leaves, after the marks, lines already written to the table, which the
// next process writes again (as without the marks), and at most one
// line cut short, which it skips as unreadable.
func (s *spillFile) markWritten(f *os.File) error {
	// f was opened for appending, which rules out writing at an offset:
	// the path is opened again, and must still be f.
	w, err := os.OpenFile(s.path, os.O_WRONLY|spillNoFollow, 0)
	if err != nil {
		return err
	}
	defer w.Close()
	fi, ferr := f.Stat()
	wi, werr := w.Stat()
	if ferr != nil || werr != nil || !os.SameFile(fi, wi) {
		return errors.New("the path no longer names the file")
	}
	const most = 4096 // bytes of a mark: within maxSpillLine
	lines := (s.off + most - 1) / most
	size, extra := s.off/lines, s.off%lines
	if size < int64(len(spillWritten))+2 {
		return errors.New("too short to mark")
	}
	buf := make([]byte, 0, most)
	var at int64
	for i := range lines {
		n := size
		if i < extra {
			n++
		}
		buf = append(buf[:0], spillWritten...)
		for int64(len(buf)) < n-2 {
			buf = append(buf, ' ')
		}
		buf = append(buf, '}', '\n')
		if _, err := w.WriteAt(buf, at); err != nil {
			return err
		}
		at += n
	}
	return w.Sync()
}

// compact replaces the file with its lines after off. A line without a
// key of its own (see next) is copied with the key it is read with here
// written in, so that it keeps that key at its new place; if that makes
// the copy larger than the bound, compact fails.
func (s *spillFile) compact(f *os.File) error {
	tmp := s.path + ".tmp"
	// A .tmp left by a process stopped here is replaced; one that is a
	// link to elsewhere is removed, not followed.
	os.Remove(tmp)
	t, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|spillNoFollow, 0o600)
	if err != nil {
		return fmt.Errorf("sqlstore: spill file: %w", err)
	}
	size, err := copyKeyed(t, io.NewSectionReader(f, s.off, s.size-s.off), s.off)
	if err == nil && size > s.max {
		// The keys written in grew it past its bound: the lines written
		// are marked instead (see close).
		err = errSpillFull
	}
	if err == nil {
		err = t.Sync()
	}
	err = errors.Join(err, t.Close())
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("sqlstore: spill file: %w", err)
	}
	s.size, s.off = size, 0
	// Make the rename durable where directories can be synced.
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// errUnkeyable fails a compaction that meets a line it cannot write its
// key into: the written lines are marked in place instead (see close),
// which moves no line.
var errUnkeyable = errors.New("sqlstore: spill file: a line without a key cannot be given one")

// copyKeyed copies the spill lines of r, which begins at offset at of
// its file, to w, each as keyed returns it, and returns the bytes
// written; it fails with errUnkeyable where keyed cannot. Lines too long
// to read back are copied as they are.
func copyKeyed(w io.Writer, r io.Reader, at int64) (int64, error) {
	br := bufio.NewReaderSize(r, maxSpillLine)
	bw := bufio.NewWriter(w)
	var n int64
	for long := false; ; {
		line, err := br.ReadSlice('\n')
		start := at
		at += int64(len(line))
		if !long && err == nil {
			var ok bool
			if line, ok = keyed(start, line); !ok {
				return n, errUnkeyable
			}
		}
		m, werr := bw.Write(line)
		n += int64(m)
		switch {
		case werr != nil:
			return n, werr
		case errors.Is(err, bufio.ErrBufferFull):
			long = true
			continue
		case err == io.EOF:
			return n, bw.Flush()
		case err != nil:
			return n, err
		}
		long = false
	}
}

// keyed returns line, the spill line that begins at offset at, with the
// key next reads it with written in when it has none of its own (or a
// damaged one), and true: a line that moves keeps its key. Other lines,
// and lines that are not records, are returned as they are. It returns
// false for a line it cannot give its key and still read back with it
// (see errUnkeyable).
func keyed(at int64, line []byte) ([]byte, bool) {
	var (
		r spillRecord
		k eventKey
	)
	if !spillLine(line) || json.Unmarshal(line, &r) != nil || k.parse(r.Key) {
		return line, true
	}
	key := lineKey(at, line).String()
	out := keyedBytes(line, key)
	if out == nil {
		// A damaged key, or an unusual line: encoded again.
		r.Key = key
		b, err := json.Marshal(r)
		if err != nil {
			return line, false
		}
		out = append(b, '\n')
	}
	var back spillRecord
	if len(out) > maxSpillLine || json.Unmarshal(out, &back) != nil || back.Key != key {
		return line, false
	}
	return out, true
}

// keyedBytes returns line with the member "event_key":key right after its
// first, the event_time, the rest byte for byte as it was, or nil when
// line is not as an Auditor writes it (a time string right after
// spillPrefix) or names an event_key already (encoding/json takes the
// last of two, in any case).
func keyedBytes(line []byte, key string) []byte {
	if bytes.Contains(bytes.ToLower(line), []byte(`"event_key"`)) {
		return nil
	}
	rest := line[len(spillPrefix):]
	if len(rest) == 0 || rest[0] != '"' {
		return nil
	}
	end := bytes.IndexByte(rest[1:], '"') + 1 // a time has no quote or backslash in it
	if end <= 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return nil
	}
	cut := len(spillPrefix) + end + 1
	if cut >= len(line) || line[cut] != ',' && line[cut] != '}' {
		return nil
	}
	out := make([]byte, 0, len(line)+len(`,"event_key":""`)+len(key))
	out = append(append(append(out, line[:cut]...), `,"event_key":"`...), key...)
	return append(append(out, '"'), line[cut:]...)
}
