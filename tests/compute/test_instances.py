"""instances: contacts are where two objects meet, never along an object's free edge."""

from __future__ import annotations

import numpy as np

from geounet.compute.instances import contact_pixels


def test_contacts_are_the_shared_edge_only():
    ids = np.zeros((10, 12), np.int32)
    ids[2:8, 1:6] = 1  # two roofs side by side, touching along columns 5|6
    ids[2:8, 6:11] = 2
    ids[0, 0] = 0
    c = contact_pixels(ids, 1)
    assert c[2:8, 5].all() and c[2:8, 6].all()  # one pixel each side of the seam
    assert c.sum() == 2 * 6
    free = ids.copy()
    free[:, 6:] = 0  # alone: no contact anywhere
    assert not contact_pixels(free, 2).any()
    assert contact_pixels(ids, 2).sum() == 4 * 6 and not contact_pixels(ids, 0).any()


def test_a_gap_narrower_than_the_radius_still_makes_contacts():
    ids = np.zeros((5, 9), np.int32)
    ids[:, :4] = 1
    ids[:, 5:] = 2  # one background column between them
    assert contact_pixels(ids, 1).sum() == 0
    c = contact_pixels(ids, 2)
    assert c[:, 3].all() and c[:, 5].all() and not c[:, 4].any()
