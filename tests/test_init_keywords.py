"""zray.init() takes Ray's keywords: a misspelt one is an error, Ray's own
that zray does not act on yet are accepted with one warning naming them."""
import warnings

import pytest

import zray


def test_init_rejects_a_keyword_ray_does_not_have():
    with pytest.raises(TypeError, match="num_cpu"):
        zray.init(num_cpu=2)
    assert not zray.is_initialized()


def test_init_names_every_unknown_keyword():
    with pytest.raises(TypeError, match="'dashbord_port'.*'nmespace'"):
        zray.init(nmespace="x", dashbord_port=1)


def test_init_warns_once_naming_ray_keywords_it_ignores(start_cluster):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start_cluster(num_cpus=1, runtime_env={"env_vars": {}}, local_mode=False)
    ignored = [w for w in caught if "zray.init() ignores" in str(w.message)]
    assert len(ignored) == 1, [str(w.message) for w in caught]
    assert "local_mode" in str(ignored[0].message) and "runtime_env" in str(ignored[0].message)

    @zray.remote
    def one():
        return 1
    assert zray.get(one.remote(), timeout=30) == 1
