"""Model surgery: replace the 1000-way softmax with a new head, freeze layers, count parameters.

Explained in notebooks ``02_replace_softmax`` (new head), ``04_freezing`` (how deep to freeze, BatchNorm)
and ``06_extension_layers`` (extra Dense layers before the classifier, Pittaras et al. 2017).

The new model is *flat*: it reuses the backbone's layers up to its pooled feature layer and adds the new
layers after it, so every layer can be found by name and frozen on its own.
"""

from __future__ import annotations

from typing import Sequence

from course_utils.quiet import keras
import numpy as np

from course_utils.blocks import HEAD_NAME, block_names, feature_layer, layer_blocks

EXTENSION_PREFIX = "extension"
NEW_LAYER_PREFIXES = (HEAD_NAME, EXTENSION_PREFIX)


def is_new_layer(layer_name: str) -> bool:
    """True for the layers ``replace_head`` adds (extension layers and the new head)."""
    return layer_name.startswith(NEW_LAYER_PREFIXES)


def replace_head(backbone: keras.Model, num_classes: int, extension_units: Sequence[int] = (),
                 dropout: float = 0.2, layer: str | None = None, seed: int = 0) -> keras.Model:
    """Drop the ImageNet classifier and add an ``num_classes``-way softmax head.

    ``extension_units`` adds that many fully-connected ReLU layers before the head (Pittaras' "extension"
    layers, notebook ``06_extension_layers``). ``layer`` picks the feature layer (default: the pooled
    penultimate layer). The backbone's layers and weights are shared, not copied.
    """
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got num_classes={num_classes}. "
                         "Check that your dataset folder has one sub-folder per class.")
    name = layer or feature_layer(backbone)
    x = backbone.get_layer(name).output
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="extension_pool")(x)
    for i, units in enumerate(extension_units, start=1):
        if int(units) < 1:
            raise ValueError(f"extension_units must be positive integers, got {list(extension_units)}")
        x = keras.layers.Dense(int(units), activation="relu", name=f"{EXTENSION_PREFIX}_{i}",
                               kernel_initializer=keras.initializers.HeUniform(seed=seed + i))(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout", seed=seed)(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_NAME,
                             kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return keras.Model(backbone.inputs, out, name=f"{backbone.name}_{num_classes}way")


def _is_batchnorm(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def _trainable_blocks(model: keras.Model, train_last: int) -> set[str]:
    blocks = block_names(model)
    if train_last < 0 or train_last > len(blocks):
        raise ValueError(f"train_last must be between 0 and {len(blocks)} (this model's blocks: "
                         f"{blocks[0]} ... {blocks[-1]}), got {train_last}.")
    return set(blocks[len(blocks) - train_last:]) if train_last else set()


def _layer_index(model: keras.Model, upto: int | str) -> int:
    if isinstance(upto, str):
        names = [layer.name for layer in model.layers]
        if upto not in names:
            raise ValueError(f"No layer named {upto!r}. Layer names look like {names[1:4]} ... "
                             "(see model.summary()).")
        return names.index(upto)
    if not -len(model.layers) <= upto < len(model.layers):
        raise ValueError(f"Layer index {upto} is out of range: the model has {len(model.layers)} layers.")
    return upto % len(model.layers)


def freeze(model: keras.Model, train_last: int | None = None, upto: int | str | None = None,
           bn: str = "inference") -> dict[str, int]:
    """Choose which layers train; returns ``count_params(model)``.

    - ``train_last=k``: train only the last ``k`` blocks of the backbone (plus the new layers);
      ``k=0`` trains only the new head (Chu et al.'s F(1-7)); ``k=len(block_names(model))`` tunes all.
    - ``upto=i`` or ``upto="layer_name"``: freeze every layer up to and including that one.
    - neither: freeze the whole backbone, train only the new layers.
    - ``bn="inference"`` (default, the Keras recommendation) keeps every BatchNormalization layer frozen,
      so it normalises with the ImageNet statistics; ``bn="train"`` lets BatchNorm layers in trained
      blocks use batch statistics, the pitfall shown in notebook ``04_freezing``.

    Call ``compile`` after ``freeze``: Keras reads ``trainable`` when it compiles.
    """
    if bn not in {"inference", "train"}:
        raise ValueError(f"bn must be 'inference' or 'train', got {bn!r}.")
    if train_last is not None and upto is not None:
        raise ValueError("Give train_last (count blocks from the top) or upto (a layer), not both.")
    model.trainable = True
    if upto is not None:
        last_frozen = _layer_index(model, upto)
        decide = {layer.name: i > last_frozen for i, layer in enumerate(model.layers)}
    else:
        blocks = _trainable_blocks(model, train_last or 0)
        owner = layer_blocks(model)
        decide = {layer.name: is_new_layer(layer.name) or owner.get(layer.name) in blocks
                  for layer in model.layers}
    for layer in model.layers:
        trainable = decide[layer.name]
        if _is_batchnorm(layer) and bn == "inference":
            trainable = False
        layer.trainable = trainable
    return count_params(model)


def count_params(model: keras.Model) -> dict[str, int]:
    """Trainable, non-trainable and total parameter counts (as ``model.summary()`` reports them)."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}


def trainable_layers(model: keras.Model) -> list[str]:
    """Names of the layers that own trainable weights."""
    return [layer.name for layer in model.layers if layer.trainable and layer.trainable_weights]


def reinitialize(model: keras.Model, blocks: Sequence[str], seed: int = 0) -> list[str]:
    """Re-initialise the weights of the given backbone blocks (Chu et al.'s R(6-8)); returns the layers reset.

    Kernels get the layer's own initializer, BatchNorm goes back to identity (gamma 1, beta 0, mean 0,
    var 1). Notebook ``04_freezing`` and the ``reinit_top`` sweep topology use it.
    """
    wanted = set(blocks)
    unknown = wanted - set(block_names(model))
    if unknown:
        raise ValueError(f"Unknown blocks {sorted(unknown)}; this model has {block_names(model)}.")
    reset = []
    owner = layer_blocks(model)
    for i, layer in enumerate(model.layers):
        if owner.get(layer.name) not in wanted or not layer.weights:
            continue
        for j, var in enumerate(layer.weights):
            var.assign(_fresh_value(layer, var, seed + 1000 * i + j))
        reset.append(layer.name)
    return reset


def _fresh_value(layer: keras.layers.Layer, var, seed: int) -> np.ndarray:
    leaf = var.path.split("/")[-1]
    if _is_batchnorm(layer):
        fill = 1.0 if leaf in {"gamma", "moving_variance"} else 0.0
        return np.full(var.shape, fill, dtype="float32")
    if "bias" in leaf:
        return np.zeros(var.shape, dtype="float32")
    init = keras.initializers.HeNormal(seed=seed)
    return keras.ops.convert_to_numpy(init(var.shape, dtype="float32"))


# --------------------------------------------------------------------------------------------------
# Splitting a model, BatchNorm statistics, heads on feature vectors (notebooks 04, 05, 06)


def _input_in(model: keras.Model, layer: keras.layers.Layer):
    """The input tensor of ``layer`` inside ``model``'s graph (a shared layer has one call per model)."""
    for nodes in getattr(model, "_nodes_by_depth", {}).values():
        for node in nodes:
            if node.operation is layer:
                tensors = node.input_tensors
                return tensors[0] if len(tensors) == 1 else list(tensors)
    return layer.input


def _split_at_tensor(model: keras.Model, tensor, what: str) -> tuple[keras.Model, keras.Model]:
    prefix = keras.Model(model.inputs, tensor, name=f"{model.name}_upto_{what}")
    try:
        suffix = keras.Model(tensor, model.outputs[0], name=f"{model.name}_after_{what}")
    except Exception as err:  # a layer after the cut also reads something before it
        raise ValueError(f"cannot cut {model.name!r} after {what!r}: a later layer also uses an earlier "
                         f"tensor ({err}); cut at another block") from err
    return prefix, suffix


def boundary(model: keras.Model, train_last: int) -> str | None:
    """The layer whose output enters the trained part when the last ``train_last`` blocks train: the pooled
    feature layer for 0, None when every block trains (notebook ``04_freezing``). ``cut`` cuts there."""
    blocks = block_names(model)
    if not 0 <= train_last <= len(blocks):
        raise ValueError(f"train_last must be between 0 and {len(blocks)}, got {train_last}")
    if train_last == len(blocks):
        return None
    if train_last == 0:
        new = [layer for layer in model.layers if is_new_layer(layer.name)]
        return _producer(_input_in(model, new[0]), new[0].name) if new else feature_layer(model)
    owner = layer_blocks(model)
    first = next(layer for layer in model.layers if owner.get(layer.name) == blocks[len(blocks) - train_last])
    return _producer(_input_in(model, first), first.name)


def _producer(tensor, consumer: str) -> str:
    """The name of the layer that outputs ``tensor`` (the single input of layer ``consumer``)."""
    if isinstance(tensor, (list, tuple)):
        raise ValueError(f"layer {consumer!r} has several inputs, so the model cannot be cut before it; "
                         "cut at another block.")
    return tensor._keras_history.operation.name


def cut(model: keras.Model, at: str) -> tuple[keras.Model, keras.Model]:
    """``(prefix, suffix)`` at layer ``at`` (e.g. ``boundary(model, k)``): the prefix maps the input to that
    layer's output, the suffix maps it to the model's output. THE one cut of the course (notebooks
    ``04_freezing``, ``05_bottleneck_features``, the Runner).

    Both share their layers (and weights) with ``model``: training the suffix trains ``model``. With every
    layer of the prefix frozen (BatchNorm in inference mode, no augmentation), training the suffix on the
    prefix's cached outputs is exactly training ``model`` on the images, at a fraction of the cost.
    """
    return _split_at_tensor(model, model.get_layer(at).output, at)


def split_before_new_layers(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """``(features, new_layers)``: the pretrained part up to the pooled features, and the layers
    ``replace_head`` added (extension layers, dropout, head), sharing weights with ``model``.

    With a frozen backbone, training ``new_layers`` on cached features is exactly training ``model``
    (notebooks ``04_freezing``, ``06_extension_layers``). Works on a suffix from :func:`cut` too.
    """
    new = [layer for layer in model.layers if is_new_layer(layer.name)]
    if not new:
        raise ValueError(f"{model.name!r} has no layers added by replace_head (names starting with "
                         f"{NEW_LAYER_PREFIXES}).")
    return _split_at_tensor(model, _input_in(model, new[0]), new[0].name)


def head_model(input_dim: int, num_classes: int, extension_units: Sequence[int] = (), dropout: float = 0.2,
               seed: int = 0) -> keras.Model:
    """The layers ``replace_head`` adds, on a feature vector of ``input_dim`` values (notebook ``06``).

    Built by ``replace_head`` itself on a one-layer "backbone", so the layers have the same names and the
    same seeded initial weights: training it on cached bottleneck features is exactly training a frozen
    backbone + extension + head, and :func:`copy_new_layers` moves the result into the full model.
    """
    inputs = keras.Input((int(input_dim),), name="features")
    identity = keras.Model(inputs, keras.layers.Identity(name="features_identity")(inputs), name="features")
    return replace_head(identity, num_classes, extension_units=extension_units, dropout=dropout,
                        layer="features_identity", seed=seed)


def copy_new_layers(source: keras.Model, target: keras.Model, state: bool = False) -> list[str]:
    """Copy the weights of the layers ``replace_head`` added (``extension_*``, ``head``) from ``source``
    to the layers of the same name in ``target``; returns their names (notebook ``06_extension_layers``).
    ``state=True`` copies every variable, the dropout layers' random-generator state included (the Runner
    uses it so a reused compiled model continues exactly as a fresh one)."""
    copied = []
    for layer in source.layers:
        values = layer.variables if state else layer.weights
        if is_new_layer(layer.name) and values:
            mine = target.get_layer(layer.name)
            if mine is not layer:
                for variable, value in zip(mine.variables if state else mine.weights, values):
                    variable.assign(value)
            copied.append(layer.name)
    if not copied:
        raise ValueError(f"{source.name!r} has no new layers with weights to copy.")
    return copied


def batchnorm_moving_stats(model: keras.Model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (moving_mean, moving_variance)}`` copies for every BatchNormalization layer, in model order
    (notebook ``04_freezing``: take them before and after training to see how far they drifted)."""
    return {layer.name: (np.array(layer.moving_mean), np.array(layer.moving_variance))
            for layer in model.layers if _is_batchnorm(layer)}


def batchnorm_drift(before: dict[str, tuple[np.ndarray, np.ndarray]],
                    after: dict[str, tuple[np.ndarray, np.ndarray]], epsilon: float = 1e-3) -> dict[str, float]:
    """How far each BatchNorm layer's moving mean moved, in units of its old standard deviation:
    the mean over channels of ``|mean_after - mean_before| / sqrt(var_before + epsilon)``.

    0 means the layer still normalises exactly as on ImageNet; 1 means its means moved by a whole standard
    deviation, so later layers see differently scaled inputs at test time (notebook ``04_freezing``).
    """
    drift = {}
    for name, (mean0, var0) in before.items():
        if name in after:
            mean1 = after[name][0]
            drift[name] = float(np.mean(np.abs(mean1 - mean0) / np.sqrt(var0 + epsilon)))
    return drift


def params_by_block(model: keras.Model) -> list[dict]:
    """Where a model's parameters live, one row per block in order (notebook ``02_replace_softmax``):
    ``block``, ``layers`` (how many), ``params``, ``trainable`` (after ``freeze``); layers added by
    ``replace_head`` are reported as their own block ``"new head"``."""
    owner = layer_blocks(model)
    rows: dict[str, dict] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        block = "new head" if is_new_layer(layer.name) else owner.get(layer.name, "stem")
        row = rows.setdefault(block, {"block": block, "layers": 0, "params": 0, "trainable": 0})
        row["layers"] += 1
        row["params"] += int(sum(np.prod(w.shape) for w in layer.weights))
        row["trainable"] += int(sum(np.prod(w.shape) for w in layer.trainable_weights))
    return list(rows.values())
