"""The schedule rules of SPEC §3: which blocks get a module, with what, and which schedules fail."""
import pytest
import torch

from modules.cluster import build_cluster_specs, chunk_size_for, final_frames, video_mask_after_clustering


def specs_for(ks, fs, algorithm='kmediods++', max_frames=12, num_patches=49, **kw):
    return build_cluster_specs(ks, fs, max_frames, True, algorithm, width=64, num_patches=num_patches,
                               chunk_size=16, **kw)


def blocks_with_module(specs):
    return [i for i, s in enumerate(specs) if s is not None]


@pytest.mark.parametrize("segments", [6, 4, 3])
def test_paper_configurations(segments):
    """B6-S,49: blocks 1-6 see all 12 frames; block 7 clusters S segments of 49 tokens."""
    specs = specs_for([49] * 12, [12] * 6 + [segments] * 6)
    assert blocks_with_module(specs) == [6]
    s = specs[6]
    assert (s.frames_in, s.frames_out, s.segment_frames) == (12, segments, 12 // segments)
    assert (s.tokens_in, s.tokens_out, s.tokens_per_frame, s.block) == (49, 49, 49, 6)
    assert final_frames(specs, 12) == segments


def test_k0_equals_k1_and_decreasing_tokens():
    specs = specs_for(list(range(49, 37, -1)), [12] * 12)
    assert blocks_with_module(specs) == list(range(1, 12))  # block 1 compares k_1 with k_0 = k_1
    assert [(s.tokens_in, s.tokens_out, s.tokens_per_frame) for s in specs[1:3]] == [(49, 48, 49), (48, 47, 48)]
    assert final_frames(specs, 12) == 12


def test_no_module_when_k_is_one_or_inter_off():
    assert blocks_with_module(specs_for([49] * 6 + [1] * 6, [12] * 12)) == []
    specs = build_cluster_specs([49] * 12, [12] * 6 + [4] * 6, 12, False, 'kmediods++', 64, 49, 16)
    assert specs == [None] * 12 and final_frames(specs, 12) == 12


def test_two_clustering_blocks_chain_tokens_and_frames():
    specs = specs_for([49] * 4 + [30] * 4 + [10] * 4, [12] * 4 + [6] * 4 + [2] * 4)
    assert blocks_with_module(specs) == [4, 8]
    assert (specs[4].frames_in, specs[4].frames_out, specs[4].tokens_per_frame) == (12, 6, 49)
    assert (specs[8].frames_in, specs[8].frames_out, specs[8].tokens_per_frame) == (6, 2, 30)


def test_pooling_keeps_tokens_and_sparse_sampling_takes_k():
    ks, fs = [49] * 4 + [30] * 4 + [20] * 4, [12] * 4 + [6] * 4 + [3] * 4
    pooled = specs_for(ks, fs, 'pooling')
    assert [pooled[i].tokens_per_frame for i in (4, 8)] == [49, 49]
    sampled = specs_for(ks, fs, 'sparse_sampling')
    assert [sampled[i].tokens_per_frame for i in (4, 8)] == [49, 30]


@pytest.mark.parametrize("algorithm", ['temporal_shift', 'token_shift'])
def test_shifts_use_max_frames(algorithm):
    specs = specs_for(list(range(55, 43, -1)), [12] * 6 + [4] * 6, algorithm)
    assert blocks_with_module(specs) == list(range(1, 12))
    assert all((s.frames_in, s.frames_out) == (12, 12) for s in specs[1:])
    assert final_frames(specs, 12) == 12


def test_automatic_knn_k():
    def knn(ks, fs, value, num_patches=49):
        return specs_for(ks, fs, 'spectral', num_patches=num_patches, spectral_knn_k=value)[6].spectral_knn_k
    assert knn([49] * 12, [12] * 6 + [4] * 6, 1) == 15  # 5·d, d = 3
    assert knn([49] * 12, [12] * 6 + [6] * 6, 4) == 10
    assert knn([196] * 6 + [160] * 6, [12] * 6 + [4] * 6, 1, num_patches=196) == 20  # 5·d + 5 when k ≥ 100
    assert knn([49] * 12, [12] * 6 + [4] * 6, 7) == 7


def test_options_are_carried_and_embeddings_only_for_clustering():
    kw = dict(distance='cosine', norm_p=1.0, pre_norm=1, threshold=1e-6, iter_limit=7, aggregation='mean',
              spectral_graph='KNN', spectral_sigma=1.0, spectral_spg=1, svd_correct_sign=0, cluster_embedding=1,
              embed_from_clip=0, cluster_frame_embedding=1)
    s = specs_for([49] * 12, [12] * 6 + [4] * 6, 'spectral', **kw)[6]
    assert (s.distance, s.norm_p, s.pre_norm, s.threshold, s.iter_limit, s.aggregation) == \
        ('cosine', 1.0, True, 1e-6, 7, 'mean')
    assert (s.spectral_graph, s.spectral_sigma, s.spectral_spg, s.svd_correct_sign) == ('KNN', 1.0, True, False)
    assert (s.cluster_embedding, s.embed_from_clip, s.cluster_frame_embedding) == (True, False, True)
    pooled = specs_for([49] * 12, [12] * 6 + [4] * 6, 'pooling', **kw)[6]
    assert not pooled.cluster_embedding and not pooled.cluster_frame_embedding and not pooled.spectral_spg
    assert specs_for([49] * 12, [12] * 6 + [4] * 6, aggregation='None')[6].aggregation is None


@pytest.mark.parametrize("ks,fs,kw,flag", [
    ([49] * 12, [12] * 11, {}, "target_frames_blocks"),  # lengths differ
    ([49] * 12, [12] * 6 + [5] * 6, {}, "target_frames_blocks"),  # 12 -> 5 does not divide
    ([49] * 6 + [1] * 6, [12] * 6 + [4] * 6, {}, "target_frames_blocks"),  # frames change without a module
    ([49] * 6 + [40] * 6, [12] * 6 + [24] * 6, {}, "target_frames_blocks"),  # frames grow
    ([49] * 6 + [200] * 6, [12] * 6 + [4] * 6, {}, "cluster_num_blocks"),  # K larger than 3·49
    ([49] * 12, [12] * 6 + [4] * 6, dict(algorithm='kmedoids'), "cluster_algo"),
    ([49] * 12, [12] * 6 + [4] * 6, dict(distance='l2'), "cluster_distance"),
    ([49] * 12, [12] * 6 + [4] * 6, dict(aggregation='max'), "aggregation"),
    ([49] * 12, [12] * 6 + [4] * 6, dict(algorithm='spectral', spectral_graph='knn'), "spectral_graph"),
    ([49] * 12, [12] * 6 + [4] * 6, dict(algorithm='spectral', spectral_graph='KNN', spectral_knn_k=200),
     "spectral_knn_k"),
    ([30] * 12, [12] * 6 + [4] * 6, dict(algorithm='spectral', spectral_spg=1), "spectral_spg"),  # 49 enter, 30 listed
])
def test_bad_schedules_name_the_flag(ks, fs, kw, flag):
    with pytest.raises(ValueError, match=flag):
        specs_for(ks, fs, **kw)


def test_chunk_size_for_patch():
    assert chunk_size_for(32) == 16 and chunk_size_for(16) == 4 and chunk_size_for(14) == 4


def test_video_mask_after_clustering():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1] * 12])
    # FIX (the original keeps each segment's last frame): a segment is valid when any of its frames is.
    assert video_mask_after_clustering(mask, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # frames 6-8: 6 valid
    assert video_mask_after_clustering(mask, 6).tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]  # frames 6-7: 6 valid
    short = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])  # one valid frame, segments of 3 frames
    assert video_mask_after_clustering(short, 4).tolist() == [[1, 0, 0, 0]]  # the original gives [[0, 0, 0, 0]]
    assert video_mask_after_clustering(mask, 12) is mask
    with pytest.raises(ValueError):
        video_mask_after_clustering(mask, 5)
