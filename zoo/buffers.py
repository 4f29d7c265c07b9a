"""Data the kernel holds in flight for a reader that has not read it: socket queues and pipes."""
from __future__ import annotations

import os
import socket
import struct

from .support import close_all, fd_room, hold, scaled, workload

KIB = 1 << 10
UNIX_PAIRS = 1000
UNIX_QUEUED = 16 * KIB  # each way
TCP_CONNECTIONS = 250
TCP_QUEUED = 48 * KIB  # client to server, as much of it as the connection takes without a reader
UDP_SOCKETS = 200
UDP_DATAGRAMS = 48  # to each socket
UDP_DATAGRAM = 1 * KIB
PIPES = 300
PIPE_FILL = 64 * KIB  # the default pipe size: 16 pages


def _queue(sock: socket.socket, size: int) -> int:
    """Sends up to `size` bytes without blocking; how many the kernel took."""
    sock.setblocking(False)
    data = b"q" * size
    sent = 0
    while sent < size:
        try:
            sent += sock.send(data[sent:])
        except BlockingIOError:
            break
    return sent


def _drain(sock: socket.socket) -> int:
    """Reads what is queued on `sock` without blocking; how many bytes."""
    sock.setblocking(False)
    got = 0
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return got
        if not data:
            return got
        got += len(data)


@workload("sockets-unix")
def sockets_unix(scale: float) -> dict:
    """Unix stream socket pairs, 16 KiB queued each way: the data charged as kmem, and the sockets.

    AF_UNIX allocates with GFP_KERNEL_ACCOUNT (unix_create1 sets sk_allocation so, "af_unix:
    charge buffers to kmemcg"), so the queued data is charged on cgroup v1 and v2 alike: each
    16 KiB send is one skb whose head comes from `skbuff_head_cache` plus a kmalloc'ed buffer
    and whose payload is a page fragment (here one order-2 page), all accounted (MEMCG_KMEM).
    With them, for each of the 2,000 sockets, its `struct unix_sock` (the `UNIX-STREAM`
    cache; proto caches are SLAB_ACCOUNT), its sockfs inode (`sock_inode_cache`), its file
    (`filp`) and dentry. Nothing here is reclaimable: it is held for a second, then each queue
    is read empty (which frees the skbs) and the sockets closed.
    """
    pairs = scaled(UNIX_PAIRS, scale)
    fd_room(2 * pairs)
    held = []
    queued = 0
    try:
        for _ in range(pairs):
            left, right = socket.socketpair()
            held.append((left, right))
            queued += _queue(left, UNIX_QUEUED) + _queue(right, UNIX_QUEUED)
        hold()
        drained = sum(_drain(sock) for pair in held for sock in pair)
    finally:
        for pair in held:
            for sock in pair:
                sock.close()
    return {"pairs": pairs, "queued_bytes": queued, "drained_bytes": drained}


@workload("sockets-tcp")
def sockets_tcp(scale: float) -> dict:
    """TCP loopback connections with up to 48 KiB each left unread: TCP socks charged, data only on v2.

    Charged (SLAB_ACCOUNT caches), in the workload's task: each client's and the listener's
    `struct tcp_sock` (the `TCP` cache), its bind buckets (`tcp_bind_bucket`,
    `tcp_bind2_bucket`), sockfs inode, file and dentry. The server ends (and the request socks
    before them) are cloned from the listener in softirq, where no memcg is current: only on
    cgroup v2, where memcg socket accounting is on, does accept charge them afterwards (in
    kernels with kmem_cache_charge), and never on v1. The queued data
    (skb heads from `skbuff_fclone_cache` and the small-head cache, payload in order-3 page
    fragments) is allocated without __GFP_ACCOUNT: cgroup v2 charges it as socket memory
    (MEMCG_SOCK, mem_cgroup_charge_skmem, in pages, as the queues grow); cgroup v1 charges it
    nowhere in memory.usage (only to memory.kmem.tcp, and only once a TCP limit is set there).
    Nothing here is reclaimable: it is held for a second, then read, and the connections
    reset (SO_LINGER 0, so that no TIME_WAIT socket outlives the workload).
    """
    connections = scaled(TCP_CONNECTIONS, scale)
    fd_room(2 * connections + 1)
    held = []
    queued = 0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(min(connections, 4096))
        for _ in range(connections):
            client = socket.create_connection(listener.getsockname())
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            held.append(client)
            server, _ = listener.accept()
            held.append(server)
            queued += _queue(client, TCP_QUEUED)
        hold()
        drained = sum(_drain(sock) for sock in held[1::2])
    finally:
        for sock in held:
            sock.close()
        listener.close()
    return {"connections": connections, "queued_bytes": queued, "drained_bytes": drained}


@workload("sockets-udp")
def sockets_udp(scale: float) -> dict:
    """UDP sockets on loopback with 48 datagrams of 1 KiB queued each: UDP socks, skbs (MEMCG_SOCK on v2).

    Charged (SLAB_ACCOUNT caches): each socket's `struct udp_sock` (the `UDP` cache), its
    sockfs inode, file and dentry. The datagrams (skbs with kmalloc'ed heads, no
    __GFP_ACCOUNT) wait in the receivers' queues: cgroup v2 charges them as socket memory
    (MEMCG_SOCK, in pages, when the receive queue takes them), cgroup v1 does not charge them.
    A datagram beyond the receive buffer (212,992 bytes by default, counted in skb truesize) is
    dropped. Nothing here is reclaimable: held for a second, then read, and closed.
    """
    count = scaled(UDP_SOCKETS, scale)
    fd_room(count + 1)
    receivers = []
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        for _ in range(count):
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receivers.append(receiver)
            receiver.bind(("127.0.0.1", 0))
        datagram = b"u" * UDP_DATAGRAM
        for receiver in receivers:
            address = receiver.getsockname()
            for _ in range(UDP_DATAGRAMS):
                sent += sender.sendto(datagram, address) > 0
        hold()
        received = sum(_drain(receiver) for receiver in receivers) // UDP_DATAGRAM  # one datagram per read
    finally:
        for receiver in receivers:
            receiver.close()
        sender.close()
    return {"sockets": count, "datagrams_sent": sent, "datagrams_queued": received}


@workload("pipes")
def pipes(scale: float) -> dict:
    """300 pipes, each filled with 64 KiB: pipe buffer pages charged as kmem, unreclaimable.

    Charged: each pipe's `struct pipe_inode_info` and its ring of 16 `pipe_buffer`s (kmalloc,
    GFP_KERNEL_ACCOUNT), its pipefs inode, two files and a dentry (SLAB_ACCOUNT caches), and
    the data: 16 order-0 pages per pipe, allocated GFP_HIGHUSER | __GFP_ACCOUNT and charged as
    kernel memory (MEMCG_KMEM), not on any LRU. Nothing of it is reclaimable while the pipes
    hold it: held for a second, then read empty, and closed.
    """
    count = scaled(PIPES, scale)
    fd_room(2 * count)
    fds = []
    filled = 0
    try:
        data = b"p" * PIPE_FILL
        for _ in range(count):
            read_end, write_end = os.pipe2(os.O_NONBLOCK)
            fds += [read_end, write_end]
            try:
                filled += os.write(write_end, data)
            except BlockingIOError:
                pass
        hold()
        drained = 0
        for read_end in fds[0::2]:
            while True:
                try:
                    chunk = os.read(read_end, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                drained += len(chunk)
    finally:
        close_all(fds)
    return {"pipes": count, "filled_bytes": filled, "drained_bytes": drained}
