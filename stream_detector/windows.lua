-- Batched, replay-safe update of per-video rolling windows (stream_detector/windows.py).
--
-- One string key per video, created once at its exact size (no sds slack), cells are
-- big-endian u32 written with BITFIELD:
--   cell 0  layout (W * 65536 + NM; anything else: absent or other layout, re-initialised)
--   cell 1  head hour (hours since the epoch, newest hour stored)
--   cell 2  head minute (minutes since the epoch, newest minute stored)
--   cell 3  published hour (0 = unknown), set once
--   cell 4  Kafka partition of the last applied offset (0xFFFFFFFF = unknown)
--   cell 5  wall-clock hour of the last EXPIRE
--   cell 6,7  last applied Kafka offset + 1, high and low 32 bits (0 = none)
--   cells 8 .. 8+4W-1          hour ring: slot (hour % W), 4 metrics
--   cells 8+4W .. 8+4W+4NM-1   minute ring: slot (minute % NM), 4 metrics
--
-- KEYS: one key per video, each at most once.
-- ARGV: W, TTL seconds, spike threshold, NM, wall-clock hour now, video records,
--   hour entries, minute entries.
--   video record (44 bytes) '>i8i8I4I4I4I4I4I4I4':
--     min offset, max offset, partition, flags (bit0: no dedup, bit1: a new log's offsets),
--     published hour,
--     n hour entries, n minute entries, max hour, max minute
--   hour / minute entry (20 bytes) '>I4I4I4I4I4': hour (or minute), 4 counts (saturated)
--   Entries of a video are consecutive and ascending.
-- Returns one 14-byte record per key '>BBI4i8': status (0 applied, 1 replayed, 2 partial
-- overlap: nothing applied), bits (1 spike, 2 changed), head hour after the update,
-- stored last offset (-1 none).
local W = tonumber(ARGV[1])
local TTL = tonumber(ARGV[2])
local SPIKE = tonumber(ARGV[3])
local NM = tonumber(ARGV[4])
local NOW_HOUR = tonumber(ARGV[5])
local vblob, hblob, mblob = ARGV[6], ARGV[7], ARGV[8]
-- TTL is refreshed at most once per wall-clock hour per video, with one hour of margin:
-- an idle video expires between TTL and TTL + 1 h after its last update.
local TTL_EFF = TTL + 3600

local HCELL = 8
local MCELL = HCELL + 4 * W
local SIZE = 4 * (MCELL + 4 * NM)
local LAYOUT = W * 65536 + NM
local TWO32 = 4294967296
local UNKNOWN_PART = 4294967295
local MAX_ARGS = 4000 -- flush BITFIELD before Lua's C-stack limit on unpack()

local sunpack, spack = struct.unpack, struct.pack
local call = redis.call
local zeros = {}
local function zero(n)
  local z = zeros[n]
  if not z then
    z = string.rep('\0', n)
    zeros[n] = z
  end
  return z
end

-- Zero `count` consecutive slots of a ring starting at slot `first` (wrapping).
local function clear_ring(key, cell0, nslots, first, count)
  if count >= nslots then
    call('SETRANGE', key, cell0 * 4, zero(16 * nslots))
    return
  end
  local s = first % nslots
  local k1 = math.min(count, nslots - s)
  call('SETRANGE', key, (cell0 + s * 4) * 4, zero(16 * k1))
  if count > k1 then
    call('SETRANGE', key, cell0 * 4, zero(16 * (count - k1)))
  end
end

-- BITFIELD offset arguments ('#<cell>'), built once per script run
local cellname = setmetatable({}, {
  __index = function(t, c)
    local v = '#' .. c
    t[c] = v
    return v
  end,
})

local out = {}
local vpos, hpos, mpos = 1, 1, 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local minoff, maxoff, part, flags, pub, nh, nm, maxh, maxm
  minoff, maxoff, part, flags, pub, nh, nm, maxh, maxm, vpos =
    sunpack('>i8i8I4I4I4I4I4I4I4', vblob, vpos)

  local hdr = call('GETRANGE', key, 0, 31)
  local exists = false
  local head, mhead, spub, spart, ttlh, ahi, alo = 0, 0, 0, 0, 0, 0, 0
  if #hdr == 32 then
    local layout
    layout, head, mhead, spub, spart, ttlh, ahi, alo = sunpack('>I4I4I4I4I4I4I4I4', hdr)
    exists = (layout == LAYOUT)
  end
  if not exists then
    head, mhead, spub, spart, ttlh, ahi, alo = 0, 0, 0, 0, 0, 0, 0
  end
  local stored = ahi * TWO32 + alo - 1
  local nodedup = (flags % 2) == 1
  -- bit1: the offsets belong to a log that started again: applied, and they become the guard's
  local fresh = (math.floor(flags / 2) % 2) == 1

  local status = 0
  if exists and not nodedup and not fresh and spart == part and stored >= 0 then
    if stored >= maxoff then
      status = 1
    elseif stored >= minoff then
      status = 2
    end
  end

  if status ~= 0 then
    hpos = hpos + 20 * nh
    mpos = mpos + 20 * nm
    out[#out + 1] = spack('>BBI4i8', status, 0, head, stored)
  else
    if not exists then
      call('SET', key, zero(SIZE), 'EX', TTL_EFF)
    end
    -- advance the hour ring (zero the slots the head moves over)
    local changed = false
    if maxh > head then
      changed = true
      if head > 0 then
        clear_ring(key, HCELL, W, head + 1, maxh - head)
      end
      head = maxh
    end
    if maxm > mhead then
      if mhead > 0 then
        clear_ring(key, MCELL, NM, mhead + 1, maxm - mhead)
      end
      mhead = maxm
    end
    local lowh = head - W + 1
    local lowm = mhead - NM + 1

    local args = { 'BITFIELD', key, 'OVERFLOW', 'SAT' }
    local n = 4
    for _ = 1, nh do
      local h, a, b, c, d
      h, a, b, c, d, hpos = sunpack('>I4I4I4I4I4', hblob, hpos)
      if h >= lowh then
        local base = HCELL + (h % W) * 4
        if a > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[base], a
          n = n + 4
        end
        if b > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[(base + 1)], b
          n = n + 4
        end
        if c > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[(base + 2)], c
          n = n + 4
        end
        if d > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[(base + 3)], d
          n = n + 4
        end
        if n > MAX_ARGS then
          call(unpack(args, 1, n))
          changed = true
          n = 4
        end
      end
    end
    if n > 4 then
      changed = true
    end
    local mfirst = n + 1 -- first minute INCRBY argument in this BITFIELD call
    for _ = 1, nm do
      local m, a, b, c, d
      m, a, b, c, d, mpos = sunpack('>I4I4I4I4I4', mblob, mpos)
      if m >= lowm then
        local base = MCELL + (m % NM) * 4
        if a > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[base], a
          n = n + 4
        end
        if b > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[(base + 1)], b
          n = n + 4
        end
        if c > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[(base + 2)], c
          n = n + 4
        end
        if d > 0 then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4] = 'INCRBY', 'u32', cellname[(base + 3)], d
          n = n + 4
        end
      end
    end
    local nminc = (n - mfirst + 1) / 4
    local bits = 0
    if n > 4 then
      local reply = call(unpack(args, 1, n))
      -- one reply value per subcommand after OVERFLOW; the minute INCRBYs are a run
      local r0 = (mfirst - 5) / 4
      for j = 1, nminc do
        if reply[r0 + j] >= SPIKE then
          bits = 1
          break
        end
      end
    end
    -- header last: the applied offset is written right after the counts it covers
    local newpart, ahi2, alo2 = part, 0, 0
    if nodedup then
      newpart = UNKNOWN_PART
    else
      ahi2 = math.floor((maxoff + 1) / TWO32)
      alo2 = (maxoff + 1) - ahi2 * TWO32
    end
    if pub > 0 and spub == 0 then
      spub = pub
      changed = true
    end
    call('SETRANGE', key, 0,
      spack('>I4I4I4I4I4I4I4I4', LAYOUT, head, mhead, spub, newpart, NOW_HOUR, ahi2, alo2))
    if exists and ttlh ~= NOW_HOUR then
      call('EXPIRE', key, TTL_EFF)
    end
    if changed then
      bits = bits + 2
    end
    out[#out + 1] = spack('>BBI4i8', 0, bits, head, nodedup and -1 or maxoff)
  end
end
return table.concat(out)
