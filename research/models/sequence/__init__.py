"""Sequence, language, audio and multimodal models (family ``"sequence"``: ``research.models.names("sequence")``).

Importing ``research.models`` registers them: ``fasttext``, ``text_bilstm``, ``text_cnn`` (``fasttext``);
``tener``, ``transformer_ner``, ``bilstm_crf`` (``tener``; ESuLMO's subword language model in ``esulmo``);
``caption_soft_attention``, ``caption_two_stream``, ``sentence_autoencoder`` (``captioning``); ``wave_resnet``
(``audio``); ``voice_face_cnn`` (``voice_face``); ``doctor2vec``, ``doctor2vec_mean`` (``doctor2vec``). Also here,
built directly by their tasks: the recall-task RNNs of ``experiments.rnn_cells`` (``recall_rnn``) and the TCC frame
encoder + embedder (``tcc``). Recurrent cells and layers live in ``research.layers.recurrent``, attention in
``research.layers.attention``, the CRF and the hierarchical softmax in ``research.ops.sequence``.
"""
