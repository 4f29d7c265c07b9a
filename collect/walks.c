/* The collector's inner loops: walks over what the kernel hands out and the object pseudonym
 * table, millions of records a second. They are C, loaded with ctypes (collect/native.py),
 * rather than numba: numba and LLVM would add about 110 MiB and a third of a second to every
 * capture, on hosts where the collector must stay small.
 *
 * Built by `make native`; every array is the caller's (numpy), nothing is allocated here.
 */
#include <stddef.h>
#include <stdint.h>

/* -- tracefs ring buffer pages (collect/ringbuf.py) ------------------------------------ */

#define COMMIT_LENGTH_MASK ((1ULL << 30) - 1)
#define MISSED_EVENTS (1ULL << 31)
#define MISSED_STORED (1ULL << 30)
#define TYPE_PADDING 29
#define TYPE_TIME_EXTEND 30
#define TYPE_TIME_STAMP 31
#define TS_SHIFT 27
#define TS_MSB (0xF8ULL << 56)

/* Give a 59-bit absolute timestamp the 5 MSBs of the running one (kernel: rb_fix_abs_ts). */
static uint64_t fix_absolute_ts(uint64_t absolute, uint64_t running)
{
	uint64_t msb = running & TS_MSB;

	if (msb) {
		absolute |= msb;
		if (absolute < running)
			absolute += 1ULL << 59;
	}
	return absolute;
}

/* Decode the data events of every page into the *_out arrays; returns how many, and adds the
 * events the ring buffer lost before the pages to *missed. Word indices are u32 offsets into
 * the whole buffer. A malformed event (impossible length) ends the walk of its page. */
int64_t walk_pages(const uint32_t *words, int64_t n_words, int64_t page_words, uint16_t cpu,
		   uint64_t *ts_out, uint16_t *cpu_out, uint16_t *type_out, int64_t *start_out,
		   int32_t *length_out, uint64_t *missed)
{
	int64_t n = 0;
	int64_t capacity = (page_words - 4) * 4; /* data bytes a page can hold */

	for (int64_t base = 0; base + page_words <= n_words; base += page_words) {
		uint64_t ts = words[base] | (uint64_t)words[base + 1] << 32;
		uint64_t commit = words[base + 2]; /* flags live in the low 32 bits of the local_t */
		int64_t size = (int64_t)(commit & COMMIT_LENGTH_MASK);
		int64_t pos = base + 4, end;

		size = (size < capacity ? size : capacity) / 4 * 4;
		end = base + 4 + size / 4;
		if (commit & MISSED_EVENTS) {
			if ((commit & MISSED_STORED) && size + 8 <= capacity)
				*missed += words[end] | (uint64_t)words[end + 1] << 32;
			else
				*missed += 1;
		}
		while (pos < end) {
			uint32_t header = words[pos];
			uint32_t type_len = header & 31;
			uint64_t delta = header >> 5;
			/* array[0]: a length, a time extension or the first payload word, by type */
			int64_t array0 = pos + 1 < end ? words[pos + 1] : 0;
			int64_t payload, following;

			if (type_len == TYPE_PADDING) {
				if (delta == 0 || array0 == 0)
					break; /* the rest of the page is empty */
				pos += 1 + array0 / 4;
				continue;
			}
			if (type_len == TYPE_TIME_EXTEND) {
				ts += ((uint64_t)array0 << TS_SHIFT) + delta;
				pos += 2;
				continue;
			}
			if (type_len == TYPE_TIME_STAMP) {
				ts = fix_absolute_ts(((uint64_t)array0 << TS_SHIFT) + delta, ts);
				pos += 2;
				continue;
			}
			if (type_len == 0) {
				if (array0 < 8)
					break; /* corrupt: a long event carries at least one payload word */
				payload = pos + 2;
				following = pos + 1 + array0 / 4;
			} else {
				payload = pos + 1;
				following = pos + 1 + type_len;
			}
			if (following > end)
				break; /* truncated at the commit boundary */
			ts += delta;
			ts_out[n] = ts;
			cpu_out[n] = cpu;
			type_out[n] = words[payload] & 0xFFFF;
			start_out[n] = payload * 4;
			length_out[n] = (int32_t)((following - payload) * 4);
			n++;
			pos = following;
		}
	}
	return n;
}

/* out[i] = data[at[i] : at[i] + width]: one field of each selected event. */
void gather(const uint8_t *data, const int64_t *at, int64_t n, int64_t width, uint8_t *out)
{
	for (int64_t i = 0; i < n; i++)
		for (int64_t k = 0; k < width; k++)
			out[i * width + k] = data[at[i] + k];
}

/* Each event's bytes, data[start[i] : start[i] + length[i]], one after another into out: the
 * events held back for the next drain, without the pages they came in. */
void copy_spans(const uint8_t *data, const int64_t *start, const int32_t *length, int64_t n, uint8_t *out)
{
	for (int64_t i = 0; i < n; i++)
		for (int32_t k = 0; k < length[i]; k++)
			*out++ = data[start[i] + k];
}

#define FNV_OFFSET 0xCBF29CE484222325ULL
#define FNV_PRIME 0x100000001B3ULL

/* End (first NUL, or start + length) and FNV-1a hash of each string. */
void c_string_spans(const uint8_t *data, int64_t size, const int64_t *start, const int64_t *length,
		    int64_t n, int64_t *end_out, uint64_t *digest_out)
{
	for (int64_t i = 0; i < n; i++) {
		int64_t position = start[i];
		int64_t limit = position + length[i] < size ? position + length[i] : size;
		uint64_t digest = FNV_OFFSET;

		while (position < limit && data[position] != 0) {
			digest = (digest ^ data[position]) * FNV_PRIME;
			position++;
		}
		end_out[i] = position;
		digest_out[i] = digest;
	}
}

/* Whether every string i has the same bytes as string other[i]. */
int spans_equal(const uint8_t *data, const int64_t *start, const int64_t *end, const int64_t *other, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		int64_t j = other[i];

		if (end[i] - start[i] != end[j] - start[j])
			return 0;
		for (int64_t k = 0; k < end[i] - start[i]; k++)
			if (data[start[i] + k] != data[start[j] + k])
				return 0;
	}
	return 1;
}

/* -- BPF perf buffer records (collect/bpf_outputs.py) ----------------------------------- */

#define PERF_RECORD_SAMPLE 9

/* Payload offsets (bytes) of the PERF_RECORD_SAMPLE records in 8-byte words of perf records;
 * other records (PERF_RECORD_LOST) are skipped: the BPF program counts the records it could
 * not write itself. Returns how many; *whole_bytes gets the bytes of whole records (a record
 * cut by the end of `words` is left for the next read). */
int64_t perf_samples(const uint64_t *words, int64_t n_words, int64_t *offsets_out, int64_t *whole_bytes)
{
	int64_t n = 0, at = 0;

	while (at < n_words) {
		uint64_t header = words[at];
		int64_t size = (int64_t)(header >> 48) / 8;

		if (size == 0 || at + size > n_words)
			break;
		if ((header & 0xFFFFFFFF) == PERF_RECORD_SAMPLE)
			offsets_out[n++] = at * 8 + 12; /* header, then u32 size, then the payload */
		at += size;
	}
	*whole_bytes = at * 8;
	return n;
}

/* -- object pseudonyms (collect/pseudonyms.py) ------------------------------------------ */

#define ALLOC 1
#define EMPTY 0ULL
#define FREED 1ULL /* tombstone: neither a kernel pointer nor a tagged pfn */

static int64_t home(int64_t capacity, uint64_t key)
{
	return (int64_t)((key * 0x9E3779B97F4A7C15ULL) >> 40) & (capacity - 1);
}

/* The slot holding `key`, or -1. */
static int64_t find(const uint64_t *keys, int64_t capacity, uint64_t key)
{
	for (int64_t i = home(capacity, key); keys[i] != EMPTY; i = (i + 1) & (capacity - 1))
		if (keys[i] == key)
			return i;
	return -1;
}

/* Where a new `key` goes: the first tombstone or empty slot on its probe path. */
static int64_t free_slot(const uint64_t *keys, int64_t capacity, uint64_t key)
{
	int64_t i = home(capacity, key);

	while (keys[i] != EMPTY && keys[i] != FREED)
		i = (i + 1) & (capacity - 1);
	return i;
}

/* For each event in time order: an allocation takes a fresh id, a free takes its allocation's
 * id and forgets the address (the next object there is another object). Returns the next id;
 * *used counts the slots holding a key or a tombstone. */
int64_t assign(uint64_t *keys, int64_t *values, int64_t capacity, const uint64_t *key, const int8_t *op,
	       int64_t n, int64_t *out, int64_t next_id, int64_t *used)
{
	for (int64_t e = 0; e < n; e++) {
		int64_t i;

		if (op[e] == 0 || key[e] <= FREED) /* no address (NULL), or one no object can have */
			continue;
		i = find(keys, capacity, key[e]);
		if (op[e] == ALLOC) {
			if (i < 0) {
				i = free_slot(keys, capacity, key[e]);
				if (keys[i] == EMPTY)
					(*used)++;
				keys[i] = key[e];
			}
			values[i] = next_id;
			out[e] = next_id++;
		} else if (i >= 0) {
			out[e] = values[i];
			keys[i] = FREED;
		}
	}
	return next_id;
}

void reinsert(uint64_t *keys, int64_t *values, int64_t capacity, const uint64_t *old_keys,
	      const int64_t *old_values, int64_t n)
{
	for (int64_t e = 0; e < n; e++) {
		int64_t i = free_slot(keys, capacity, old_keys[e]);

		keys[i] = old_keys[e];
		values[i] = old_values[e];
	}
}
