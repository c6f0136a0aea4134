// A js-libp2p peer joins a Nakshatra swarm through one bootstrap address and finds the
// servers of one block of a model in the Kademlia DHT.
//
//   node find-providers.mjs <bootstrap multiaddr with /p2p/> <model id hex> <layer>
//
// It speaks what the Rust nodes speak: TCP, noise, yamux, identify, and Kademlia on
// /nakshatra/kad/1.0.0. The provider key is the sha2-256 multihash of
// `nakshatra/block/<model id>/<layer>`, carried here in a raw CID (the DHT keys on the
// multihash alone). Prints one JSON line: {"self", "key", "providers": [peer ids]}.

import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import * as raw from 'multiformats/codecs/raw'

const [bootstrap, modelId, layer] = process.argv.slice(2)
if (!bootstrap || !/^[0-9a-f]{64}$/.test(modelId ?? '') || !/^\d+$/.test(layer ?? '')) {
  console.error('usage: node find-providers.mjs <bootstrap multiaddr> <model id hex> <layer>')
  process.exit(2)
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: '/nakshatra/kad/1.0.0',
      clientMode: false,
      // The swarm under test lives on loopback: keep private addresses.
      peerInfoMapper: (peer) => peer
    })
  }
})

const deadline = AbortSignal.timeout(30_000)
try {
  await node.dial(multiaddr(bootstrap), { signal: deadline })
  const digest = await sha256.digest(new TextEncoder().encode(`nakshatra/block/${modelId}/${layer}`))
  const cid = CID.createV1(raw.code, digest)
  const providers = new Set()
  // The routing table fills once identify has told us the peer speaks our DHT protocol.
  while (providers.size === 0 && !deadline.aborted) {
    for await (const provider of node.contentRouting.findProviders(cid, { signal: deadline })) {
      providers.add(provider.id.toString())
    }
    if (providers.size === 0) await new Promise((resolve) => setTimeout(resolve, 250))
  }
  console.log(JSON.stringify({
    self: node.peerId.toString(),
    key: Buffer.from(digest.bytes).toString('hex'),
    providers: [...providers]
  }))
} catch (err) {
  console.error(`interop failed: ${err.message}`)
  process.exitCode = 1
} finally {
  await node.stop()
}
