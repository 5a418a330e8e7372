// The memory size a live source has announced to the destination. The guest runs through precopy
// and may grow its memory at any time: every size pages are sent against must have been announced
// first (SETUP, then GROW), after the pages already queued for the smaller size.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { FramedChannel } from '../transport/index.js';
import type { PageSender } from './page-sender.js';

export class AnnouncedSize {
  constructor(
    private readonly mem: GuestMemory,
    private readonly bulk: FramedChannel,
    private readonly sender: PageSender,
    /** What SETUP announced. */
    public bytes: number,
  ) {}

  /** Announces growth up to `bytes` (default: the memory's size now) if beyond what was announced. */
  async grow(bytes = this.mem.sizeBytes): Promise<void> {
    if (bytes <= this.bytes) return;
    await this.sender.flush();
    await this.bulk.sendMessage({ type: 'GROW', newBytes: bytes });
    this.bytes = bytes;
  }
}
