"""The classic GANs' training recipes (ganops/recipes.py): each ganops build trains exactly like the same recipe
built from the reference ops and per-parameter loops, in float64; the demo runs a recipe; marked-slow tests check
that every recipe learns its data (SeqGAN its grammar, CycleGAN the second domain's colours, the others the
distribution of the shapes images)."""

from __future__ import annotations

import pytest
import torch

from ganops import __main__ as cli
from ganops import data, recipes, training_utils
from ganops.reference import training_utils as reference_training_utils

from helpers import relative_error, require_backend

def _config(reference: bool, backend: str | None = "cpp", **overrides) -> recipes.RecipeConfig:
    settings = dict(image_size=8, width=4, z_dim=8, batch_size=4, steps=6, seed=3, dtype=torch.float64)
    settings.update(overrides)
    return recipes.RecipeConfig(use_reference_ops=reference, backend=None if reference else backend, **settings)


def _options(name: str) -> dict | None:
    # Small enough for a test: two n_critic steps; SeqGAN past its pre-training after one step, one rollout.
    return {
        "wgan": {"n_critic": 2},
        "wgan-gp": {"n_critic": 2},
        "seqgan": {"pretrain_steps": 1, "rollouts": 1, "hidden": 8},
        "began": {"hidden": 8},
        "gan": {"hidden": 16},
        "improved-gan": {"reference_size": 3, "num_kernels": 3, "kernel_dim": 2},
    }.get(name)


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_ganops_recipe_trains_like_the_reference_build(name):
    require_backend("cpp")
    built, reference_states = {}, None
    for reference in (True, False):
        recipe = recipes.build(name, _config(reference, options=_options(name)))
        # Start from the same state: the two builds draw the same parameters but, for spectral norm, may start
        # their power-iteration vectors from different iterates (the ganops conversion runs its own iterations).
        if reference_states is None:
            reference_states = {
                key: {name: value.clone() for name, value in network.state_dict().items()}
                for key, network in recipe.networks().items()
            }
        else:
            for key, network in recipe.networks().items():
                network.load_state_dict(reference_states[key])
        # ProGAN: steps 2 and 3 of 6 are in the fade-in (alpha 0 then 0.5).
        losses = [recipe.step() for _ in range(3 if name == "progan" else 2)]
        built[reference] = recipe, losses
    (ganops_recipe, ganops_losses), (reference_recipe, reference_losses) = built[False], built[True]
    for step, (ours, theirs) in enumerate(zip(ganops_losses, reference_losses)):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert abs(ours[key] - theirs[key]) <= 1e-10 * max(1.0, abs(theirs[key])), (step, key, ours[key], theirs[key])
    for network_name, network in ganops_recipe.networks().items():
        reference_state = reference_recipe.networks()[network_name].state_dict()
        state = network.state_dict()
        assert state.keys() == reference_state.keys(), network_name
        for key, value in state.items():
            expected = reference_state[key]
            if value.is_floating_point():
                assert relative_error(value, expected) <= 1e-10, (network_name, key)
            else:
                assert torch.equal(value, expected), (network_name, key)
    # Training changed the parameters, and the builds ran different code where the recipe has something to swap.
    initial = recipes.build(name, _config(True, options=_options(name)))
    assert any(
        not torch.equal(parameter, initial_parameter)
        for parameter, initial_parameter in zip(
            reference_recipe.networks()["generator" if "generator" in reference_recipe.networks() else "g_ab"].parameters(),
            initial.networks()["generator" if "generator" in initial.networks() else "g_ab"].parameters(),
        )
    )
    assert (ganops_recipe.utilities is training_utils) and (reference_recipe.utilities is reference_training_utils)
    assert (ganops_recipe.ops_backend, reference_recipe.ops_backend) == ("cpp", "reference")


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_recipe_samples_and_history(name):
    recipe = recipes.build(name, _config(True, dtype=torch.float32, options=_options(name)))
    recipe.step()
    assert recipe.steps_done == 1 and all(len(values) == 1 for values in recipe.history.values())
    assert {"d", "g"} <= recipe.history.keys()
    samples = recipe.sample(24)
    if name == "seqgan":
        assert samples.shape == (24, data.SENTENCE_LENGTH) and samples.dtype == torch.int64
    else:
        assert samples.shape[1:] == (3, 8, 8) and samples.shape[0] >= 8
        assert samples.isfinite().all()
        if name != "progan":  # ProGAN's G ends in a linear toRGB, not tanh
            assert samples.abs().max() <= 1.0 + 1e-6


def test_recipe_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="name must be one of"):
        recipes.build("gan2")
    with pytest.raises(ValueError, match="unknown options"):
        recipes.build("dcgan", recipes.RecipeConfig(options={"n_critic": 5}))


def test_progan_fades_in_over_the_middle_third():
    recipe = recipes.build("progan", _config(True, dtype=torch.float32, steps=9))
    alphas = []
    for _ in range(9):
        alphas.append(recipe.alpha())
        recipe.steps_done += 1
    assert alphas == [0.0, 0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]


def test_grammar_sentences_and_checker():
    sentences = data.grammar_sentences(50, torch.Generator().manual_seed(0))
    assert sentences.shape == (50, data.SENTENCE_LENGTH) and data.is_grammatical(sentences).all()
    index = {word: i for i, word in enumerate(data.VOCABULARY)}

    def tokens(text: str) -> list[int]:
        words = text.split()
        return [index[word] for word in words + ["."] * (data.SENTENCE_LENGTH - len(words))]

    valid = ["the cat sees .", "a big dog chases the small bird ."]
    invalid = ["the cat .", "cat sees the dog .", "the cat sees the .", "the cat sees . the", "big the cat sees ."]
    checked = data.is_grammatical(torch.tensor([tokens(text) for text in valid + invalid]))
    assert checked.tolist() == [True] * len(valid) + [False] * len(invalid)
    assert data.sentence_text(torch.tensor(tokens("the cat sees ."))) == "the cat sees ."


def test_swap_colours_rotates_channels():
    images = torch.arange(2 * 3 * 2.0).view(2, 3, 2, 1)
    swapped = data.swap_colours(images)
    assert torch.equal(swapped[:, 0], images[:, 1]) and torch.equal(swapped[:, 2], images[:, 0])


@pytest.mark.parametrize("name", ["seqgan", "lsgan"])
def test_demo_trains_a_recipe(tmp_path, capsys, name):
    cli.main([
        "demo", "--recipe", name, "--steps", "2", "--batch-size", "4", "--image-size", "8", "--width", "4",
        "--output", str(tmp_path),
    ])
    output = capsys.readouterr().out
    assert "trained 2 steps" in output and "(untrained: " in output
    assert (tmp_path / "losses.png").exists()
    if name == "seqgan":
        assert "grammatical" in output
    else:
        assert (tmp_path / "samples.png").exists()


@pytest.mark.parametrize("name", ["dcgan", "seqgan", "cyclegan"])
def test_learning_metric_leaves_training_unchanged(name):
    histories = []
    for measure in (False, True):
        recipe = recipes.build(name, _config(True, dtype=torch.float32, options=_options(name)))
        metric = recipes.learning_metric(recipe)
        for _ in range(2):
            if measure:
                assert 0.0 <= metric() <= 1.0 or name not in ("seqgan", "cyclegan")
            recipe.step()
        histories.append(recipe.history)
    assert histories[0] == histories[1]
    assert metric.__doc__


# ------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_seqgan_learns_the_grammar():
    """Metric: the fraction of 200 sampled sentences the grammar accepts (random tokens: ~0), after 60 MLE
    pre-training steps and 20 adversarial steps."""
    recipe = recipes.build("seqgan", recipes.RecipeConfig(batch_size=32, options={"pretrain_steps": 60, "rollouts": 2}))
    for _ in range(80):
        recipe.step()
    assert data.is_grammatical(recipe.sample(200)).double().mean() > 0.5


def test_gan_recipe_plays_the_minimax_game_on_request():
    config = _config(True, dtype=torch.float32, options={"generator_loss": "minimax", "hidden": 16})
    recipe = recipes.build("gan", config)
    # E log(1 - D(G(z))) < 0: the minimax generator loss, not the non-saturating one (> 0).
    assert recipe.step()["g"] < 0


def test_shape_detector_accepts_the_data_and_rejects_noise():
    generator = torch.Generator().manual_seed(1)
    real = data.random_batch(200, generator, 16)
    assert data.looks_like_shapes(real).double().mean() >= 0.98
    noise = torch.rand(50, 3, 16, 16, generator=generator) * 2 - 1
    assert not data.looks_like_shapes(noise).any()
    # The same shapes on a mottled background (what a half-trained generator draws) fail.
    mottled = (real + 0.3 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    assert data.looks_like_shapes(mottled).double().mean() < 0.05
    assert not data.looks_like_shapes(torch.zeros(4, 3, 8, 8)).any()
    with pytest.raises(ValueError, match="images"):
        data.looks_like_shapes(torch.zeros(4, 8, 8))


# Steps of each image recipe's learning test (8x8 images, width 8, batch 32, seed 0, the demo's options), chosen from
# the scan in benchmarks/NOTES.md (2026-11-30). GAN oscillates (0.51 of its untrained distance after 200 steps,
# 0.42 after 300), so it trains 300.
LEARNING_STEPS = {
    "gan": 300, "dcgan": 200, "lsgan": 200, "rgan": 200, "wgan": 200, "wgan-gp": 100, "improved-gan": 200,
    "progan": 300, "sagan": 100, "began": 400, "infogan": 100, "vaegan": 100,
}


def _learning_recipe(name: str, steps: int) -> recipes.Recipe:
    options = dict(recipes.RECIPES[name].demo_options)
    return recipes.build(
        name, recipes.RecipeConfig(image_size=8, width=8, batch_size=32, steps=steps, seed=0, options=options)
    )


def test_every_image_recipe_has_a_learning_test():
    image_recipes = set(recipes.RECIPES) - {"seqgan", "cyclegan"}
    assert set(LEARNING_STEPS) == image_recipes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LEARNING_STEPS))
def test_image_recipe_learns_the_shapes_distribution(name):
    """Metric (``recipes.learning_metric``): the sliced Wasserstein distance between 512 samples and 512 real images
    falls to at most half of the untrained generator's (about 0.5; two real batches: 0.04)."""
    steps = LEARNING_STEPS[name]
    recipe = _learning_recipe(name, steps)
    distance = recipes.learning_metric(recipe)
    before = distance()
    for _ in range(steps):
        recipe.step()
    after = distance()
    assert after <= 0.5 * before, f"{name}: distance {before:.3f} untrained, {after:.3f} after {steps} steps"


@pytest.mark.slow
def test_cyclegan_moves_colours_into_the_second_domain():
    """Metric (``recipes.learning_metric``): of G_AB(a)'s saturated pixels on 256 fixed images of domain A (hues red
    to yellow-green), the fraction with a hue in domain B's range (blue to magenta, ``ganops.data.hue_fraction``):
    0.13 untrained, at least 0.8 after 80 steps. (The exact colour swap is not learnt in CPU minutes: G(a)'s error
    to the true swap stays near the identity map's, see README.)"""
    recipe = _learning_recipe("cyclegan", 80)
    in_domain_b = recipes.learning_metric(recipe)
    before = in_domain_b()
    for _ in range(80):
        recipe.step()
    after = in_domain_b()
    assert before < 0.3 and after >= 0.8, (before, after)
